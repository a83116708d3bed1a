"""What the executor does for a run of the shared trainer (runs.kind "trainer").

::

    runs.spec (the trainer's knobs) ──trainer_job──▶ JobSpec: the knobs it overrides + SEED,
        its data variant (sp<VOCAB_SIZE>)
    the job's outputs ──trainer_outcome──▶ the run's columns: from result.json, or from the
        log's summary lines (service.runs.logparse) when the trainer wrote none

The script-run counterpart is worker/run/script_job.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.core.models import Run
from service.runs.logparse import LogSummary
from trainer.config import TrainerConfig
from worker.launchers.base import JobSpec

# Output files of a trainer run and the artifact kind each is stored as.
OUTPUT_FILES = (("model.int6.ptz", "model"), ("train_gpt.py", "code"), ("train.log", "log"), ("stdout.log", "log"), ("result.json", "result"), ("metrics.jsonl", "metrics"))
# result.json's keys and the run columns they fill.
RESULT_COLUMNS = {
    "val_bpb": "val_bpb",
    "val_loss": "val_loss",
    "pre_ttt_bpb": "pre_ttt_bpb",
    "total_bytes": "artifact_bytes",
    "model_bytes": "model_bytes",
    "code_bytes": "code_bytes",
    "train_seconds": "train_seconds",
    "eval_seconds": "eval_seconds",
    "steps": "steps",
    "peak_memory_mib": "peak_memory_mib",
}


def job_env(run: Run) -> dict[str, str]:
    """The trainer's environment for `run`: its knobs and its seed (data paths are the launcher's, from the data variant).

    Raises ConfigError if the stored spec no longer validates (e.g. the trainer changed).
    """
    cfg = TrainerConfig.from_dict(dict(run.spec or {}))
    overrides = cfg.overrides()
    env = {k: v for k, v in cfg.to_env().items() if k in overrides}
    env["SEED"] = str(int(run.seed))
    return env


def data_variant(run: Run) -> str:
    """The data variant a run trains and is scored on: ``sp<VOCAB_SIZE>`` (the tokenizer must match the model's vocabulary),
    sp8192_caseops under CASEOPS_ENABLED."""
    return TrainerConfig.from_dict(dict(run.spec or {})).data_variant


def trainer_job(run: Run, timeout_s: float) -> JobSpec:
    """The job of a trainer run. Raises ConfigError if its spec no longer validates."""
    return JobSpec(run_id=run.id, env=job_env(run), hardware=run.hardware, timeout_s=timeout_s, data_variant=data_variant(run), team_id=run.team_id)


def read_result(path: Path) -> dict[str, Any] | None:
    """result.json as a dict; None when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def trainer_outcome(result: dict[str, Any] | None, summary: LogSummary) -> dict[str, Any]:
    """The run's columns from result.json (kept whole in ``result``); from the log's summary lines when it is missing."""
    if result is None:
        return summary.columns()
    values: dict[str, Any] = {"result": result}
    for key, column in RESULT_COLUMNS.items():
        if result.get(key) is not None:
            values[column] = result[key]
    return values
