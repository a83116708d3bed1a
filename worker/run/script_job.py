"""What the executor does differently for a script run (a team's own train_gpt.py).

::

    runs.spec (ScriptSpec JSON) ──script_job──▶ JobSpec: its files from script_files,
        its env + SEED + RUN_ID, its data variant
    the job's log ──service.runs.logparse──▶ live metric points, and at the end
    script_outcome ──▶ the run's columns + a result in the trainer's result.json shape
        ({"status": "succeeded" | "failed", "error": ...}), so the executor concludes
        a script run as it concludes a trainer run

A script writes no result.json: its figures come from its log alone, each with the
line it came from (kept in runs.result["figures"]).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.core.models import Run
from service.results.public_records import _SAYS_HARDWARE, read_log
from service.runs.bytes_check import ByteCount, count_bytes
from service.runs.logparse import ScriptLogSummary, script_result
from service.runs.scripts.environment import describe
from service.runs.scripts.files import run_folder_files
from service.runs.scripts.spec import SCRIPT_NAME, ScriptSpec
from service.runs.touches import read_events, summarise, unwatched
from worker.launchers.base import JobSpec
from worker.launchers.local_wrapper import STDOUT_LOG
from worker.launchers.trainer_env import AUDIT_ENV

AUDIT_LOG = "audit.jsonl"  # worker/audit/sitecustomize.py's file in the run folder

# The files of a script run's folder that are kept: its log, its code and the compressed
# model the challenge's scripts write (never the raw checkpoint: 100+ MB of no use here).
OUTPUT_FILES = (("stdout.log", "log"), (SCRIPT_NAME, "code"), ("final_model.int6.ptz", "model"), ("final_model.int8.ptz", "model"),
                (AUDIT_LOG, "log"))  # the raw events behind result["touches"]


def watched_touches(outdir: Path) -> dict[str, Any]:
    """What the script touched (service.runs.touches), from the run folder's audit.jsonl and stdout.log."""
    try:
        audit = (outdir / AUDIT_LOG).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return unwatched(f"the run folder has no {AUDIT_LOG} (the audit hook did not load, or the launcher did not bring it back)")
    log = _whole_log(outdir)
    if log is None:
        return unwatched(f"its {STDOUT_LOG} is missing or over {WHOLE_LOG_MAX_BYTES:,} bytes, so its events cannot be placed in its log")
    return summarise(read_events(audit), log)


# The log is read whole at the end (its training lines place the audit's events; its nvidia-smi
# table and cap line feed the rules); past this a run keeps what the streamed parser read.
WHOLE_LOG_MAX_BYTES = 64 << 20


def _whole_log(outdir: Path) -> bytes | None:
    path = outdir / STDOUT_LOG
    try:
        if path.stat().st_size > WHOLE_LOG_MAX_BYTES:
            return None
        return path.read_bytes()
    except FileNotFoundError:
        return None


def script_job(session: Session, run: Run, timeout_s: float) -> JobSpec:
    """The job of a script run: its folder's files, its env with SEED and RUN_ID, its data variant,
    its declared environment (described: the requirements file's text inlined).

    Raises service.runs.scripts.files.MissingScriptFile when a file's bytes are not stored.
    """
    spec = ScriptSpec.from_json(run.spec)
    env = {**spec.env, "SEED": str(int(run.seed)), "RUN_ID": f"caddie-run-{run.id}", **AUDIT_ENV}  # the watch: worker/audit
    files = run_folder_files(session, spec)
    return JobSpec(run_id=run.id, env=env, hardware=run.hardware, timeout_s=timeout_s, data_variant=spec.data,
                   script_files=files, environment=describe(spec.environment, files), team_id=run.team_id)


def model_files(outdir: Path) -> dict[str, tuple[int, float]]:
    """The compressed models (``*.ptz``) the script wrote in its run folder: path -> (bytes, mtime).
    Links are not followed (``data`` is the node's data root)."""
    found = {}
    for root, dirs, names in os.walk(outdir):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in names:
            path = Path(root) / name
            if name.endswith(".ptz") and not path.is_symlink():
                st = path.stat()
                found[str(path.relative_to(outdir))] = (st.st_size, st.st_mtime)
    return found


def counted_bytes(outdir: Path, spec: ScriptSpec, summary: ScriptLogSummary, touches: dict[str, Any]) -> ByteCount:
    """The run's bytes from its files (service.runs.bytes_check), beside its log's figures.
    A code file whose bytes changed during the run (not the uploaded ones) is not counted."""
    uploaded = {SCRIPT_NAME: spec.script_sha256, **spec.files}
    folder = {}
    for name, sha in uploaded.items():
        try:
            data = (outdir / name).read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == sha:
            folder[name] = data
    imported = set(touches.get("code_opened") or ()) | {SCRIPT_NAME} if touches.get("watched") and touches.get("code_opened") else None
    log_code = int(summary.code_bytes.value) if summary.code_bytes else None
    log_total = int(summary.artifact_bytes.value) if summary.artifact_bytes else None
    # the log's compressed model: its total less its code where it states both (a "Serialized model ...:
    # N bytes (payload...)" line is not read, and the first such line is the raw checkpoint)
    log_model = log_total - log_code if log_total is not None and log_code is not None else (int(summary.model_bytes.value) if summary.model_bytes else None)
    compressed = summary.code_bytes is not None and "(compressed)" in summary.code_bytes.line
    return count_bytes(folder, imported, model_files(outdir), log_code=log_code, log_model=log_model, log_total=log_total,
                       code_compressed=compressed)


def _timing_and_hardware(outdir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """What the rules need that no score line states, read from the log as the records' verdicts
    read it (service.results.public_records.read_log): the GPUs of its nvidia-smi table (else its
    launcher's line), its world size, a stop by its own wallclock cap (the cap line's train_time),
    the scored evaluation's time (its total_eval_time, else the final score's own line), the
    diagnostic evaluations. The hardware is the script's own report, as a record's is."""
    log = _whole_log(outdir)
    if log is None:
        return {}
    facts = read_log(STDOUT_LOG, log.decode("utf-8", errors="replace"))
    gpu, count = facts.gpu_name, facts.gpu_count or facts.world_size
    if gpu is None and facts.says_hardware and (m := _SAYS_HARDWARE.search(facts.says_hardware)):
        gpu, count = f"{m[2]} (as the log states)", count or int(m[1])
    result.update(gpu_name=gpu, world_size=count, stopped_by_cap=facts.stopped_by_cap,
                  diagnostic_eval_seconds=facts.diagnostic_eval_seconds)
    values: dict[str, Any] = {}
    if facts.train_seconds is not None:
        values["train_seconds"] = facts.train_seconds
    if facts.eval_seconds is not None:
        values["eval_seconds"] = facts.eval_seconds
        result["figures"]["eval_seconds_scored"] = {"value": facts.eval_seconds, "from": facts.eval_source}
    return values


def script_outcome(summary: ScriptLogSummary, spec: dict[str, Any], outdir: Path | None = None) -> dict[str, Any]:
    """The run's columns from its log, with ``result``: succeeded when the log has a final figure.
    With the run folder (``outdir``): what it touched (watched_touches) and its bytes counted from
    its files (counted_bytes; the files win over the log, both kept in ``result["bytes"]``)."""
    parsed = script_result(summary, score_label=ScriptSpec.from_json(spec).score_label)
    result: dict[str, Any] = {
        "status": "failed" if parsed.problem else "succeeded",
        "source": "script log",
        # The rules' code_revision: what ran is the script's own bytes.
        "trainer_revision": f"{SCRIPT_NAME} sha256:{ScriptSpec.from_json(spec).script_sha256}",
        "figures": parsed.sources,
    }
    values = dict(parsed.values)
    if outdir is not None:
        values.update(_timing_and_hardware(outdir, result))
        result["touches"] = touches = watched_touches(outdir)
        counted = counted_bytes(outdir, ScriptSpec.from_json(spec), summary, touches)
        result["bytes"] = counted.to_json()
        for column, value in counted.columns().items():
            values[column] = value
            result["figures"][column] = {"counted": value, "from": "the run folder's files (result.bytes)", "log": parsed.sources.get(column)}
    if parsed.problem:
        result["error"] = parsed.problem
    return {**values, "result": result}
