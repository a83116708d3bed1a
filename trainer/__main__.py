"""`python -m trainer [--config FILE.json]`; also `torchrun --nproc_per_node=N -m trainer`.

Config: the knobs in FILE.json first (env-var or field names), then every knob set
in the environment overrides them, so `NUM_LAYERS=9 python -m trainer --config
base.json` works as expected. Without --config, the environment alone.

A bad config or bad data exits with status 2 after one `error: ...` line on stderr;
an unexpected failure exits with 1 (traceback on stderr). Either way result.json
says status "failed" and carries the error line.

EVAL_ARTIFACT=path (knob or env) skips training: the artifact is loaded alone and scored as
its run did (train.evaluate_only); it writes eval.log and eval_result.json instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from trainer.config import ConfigError, TrainerConfig
from trainer.data import ShardError
from trainer.train import EVAL_RESULT_NAME, RunError, evaluate_only, train, write_failure

INPUT_ERRORS = (ConfigError, RunError, ShardError, OSError)


def config_values(config_file: str | None, environ: dict[str, str]) -> dict:
    """Raw knob values keyed by env-var name: the file's, overridden by the environment's."""
    values: dict = {}
    if config_file:
        try:
            data = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise RunError(f"--config {config_file}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise RunError(f"--config {config_file}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise RunError(f"--config {config_file}: expected a JSON object of KNOB: value")
        names = {f.name: TrainerConfig.env_name(f) for f in TrainerConfig.knobs()}
        values = {names.get(k, k): v for k, v in data.items()}
    for f in TrainerConfig.knobs():
        env = TrainerConfig.env_name(f)
        if env in environ:
            values[env] = environ[env]
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer", description="Train, quantise and evaluate one Parameter Golf model.")
    ap.add_argument("--config", metavar="FILE.json", help="knobs as a JSON object; environment variables override it")
    args = ap.parse_args(argv)
    values: dict = {}
    out_dir = TrainerConfig.output_dir
    try:
        values = config_values(args.config, dict(os.environ))
        out_dir = str(values.get("OUTPUT_DIR", out_dir))
        if values.get("EVAL_ARTIFACT"):  # eval-only: the artifact alone, its own settings (issue 22 item 7)
            evaluate_only(values)
        else:
            train(TrainerConfig.from_dict(values))
        return 0
    except Exception as exc:  # every failure ends in result.json, not only the expected ones
        expected = isinstance(exc, INPUT_ERRORS)
        message = str(exc) if isinstance(exc, (ConfigError, RunError, ShardError)) else f"{type(exc).__name__}: {exc}"
        message = " ".join(message.split())  # one line, whatever the exception held
        if not expected:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr, flush=True)
        if int(os.environ.get("RANK", "0")) == 0:
            try:
                seed = values.get("SEED")
                eval_only = bool(values.get("EVAL_ARTIFACT"))  # never overwrite the run's own result.json
                write_failure(Path(out_dir), message, values or None, int(seed) if str(seed).isdigit() else None,
                              EVAL_RESULT_NAME if eval_only else "result.json")
                with open(Path(out_dir) / ("eval.log" if eval_only else "train.log"), "a", encoding="utf-8") as fh:
                    fh.write(f"error: {message}\n")
            except OSError as write_exc:
                print(f"error: could not write result.json in {out_dir}: {write_exc}", file=sys.stderr)
        return 2 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
