"""A group's records/ folder, the database and store side: gather what export.py needs, zip it.

::

    exportable_group (own team only) ─▶ group_report (stats, baseline, test, eligibility)
        │  refuse early when an override is needed and missing (before reading the store)
        ▼
    each counted run: train.log and train_gpt.py from the artifact store
        (train.log missing: the log as caddie's database holds it, and README says so)
        ▼
    export.records_files ─▶ {name: bytes} ─▶ zip_bytes ─▶ records/track_<track>/<date>_<name>/...
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.errors import Conflict, Gone, InvalidInput, Issue, Unavailable
from service.core.models import SCRIPT_KIND, Artifact, Run
from service.core.storage import ArtifactMissing, ArtifactOutsideStore, ArtifactStore, ArtifactStoreError, read_chunks
from service.results import queries
from service.results.export import (
    LOG_DATABASE,
    LOG_STORED,
    ExportInput,
    SeedFiles,
    folder_name,
    override_problem,
    records_files,
    require_override,
)
from service.runs.artifacts import artifact_name
from service.runs.logs import whole_log
from service.runs.scripts.files import MissingScriptFile, run_folder_files
from service.runs.scripts.spec import SCRIPT_NAME, ScriptSpec
from service.teams.tokens import Principal

log = logging.getLogger(__name__)

LOG_FILE = "train.log"
SCRIPT_LOG_FILE = "stdout.log"  # a script run's log: what it printed, as the records' train_seed*.log are
CODE_FILE = "train_gpt.py"
# Fixed entry times make the same export the same zip, byte for byte (zip's epoch is 1980).
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def build_export(
    session: Session,
    principal: Principal,
    key: str,
    *,
    store: ArtifactStore,
    override: str | None = None,
    baseline_key: str | None = None,
    github_id: str | None = None,
) -> tuple[str, dict[str, bytes]]:
    """(folder name, {file name: bytes}) of the group's records/ folder.

    NotFound for groups the caller cannot see, Forbidden for other teams' published
    groups, Conflict when the group is not record-eligible and no override is given
    (or its runs bundled different trainers), Gone/Unavailable when the store
    cannot give a run's train_gpt.py.
    """
    problem = override_problem(override)
    if problem:
        raise InvalidInput([Issue(("override",), problem, override)])
    group = queries.exportable_group(session, principal, key)
    report = queries.group_report(session, principal, group.key, baseline_key)
    view = report.view
    require_override(group.key[:12], view.stats, report.eligibility, override)
    runs = {r.id: r for r in view.runs}
    counted = [runs[row.run_id] for row in sorted(view.stats.counted, key=lambda r: r.run_id)]
    script = ScriptSpec.from_json(group.config) if group.kind == SCRIPT_KIND else None
    inp = ExportInput(
        name=group.name,
        group_key=group.key,
        team=group.team.name,
        author=", ".join(dict.fromkeys(r.user.name for r in counted)),
        github_id=github_id,
        date=_result_date(counted),
        track=group.track,
        hardware=group.hardware,
        config=dict(group.config or {}),
        stats=view.stats,
        eligibility=report.eligibility,
        files=load_seed_files(session, store, [r.id for r in counted], SCRIPT_LOG_FILE if script else LOG_FILE),
        comparison=report.comparison,
        baseline_name=report.baseline.group.name if report.baseline else None,
        baseline_key=report.baseline.group.key if report.baseline else None,
        override=override.strip() if override else None,
        script=script,
        script_files=_script_files(session, script) if script else {},
        hardware_ran=_reported(counted, lambda r: f"{r['world_size']}x{r['gpu_name']}" if r.get("gpu_name") and r.get("world_size") else None),
        pytorch_version=_reported(counted, lambda r: r.get("pytorch_version") or r.get("torch_version")),
        environments=[r.environment for r in counted if r.environment],
    )
    return folder_name(inp), records_files(inp)


def _reported(runs: list[Run], read: Callable[[dict], object]) -> str | None:
    """What the runs' result.json say, joined when they differ (None: no run said)."""
    said = list(dict.fromkeys(str(v) for v in (read(r.result or {}) for r in runs) if v))
    return ", ".join(said) or None


def _script_files(session: Session, script: ScriptSpec) -> dict[str, bytes]:
    """The files a script group's train_gpt.py needs beside it, from the script store (its own bytes come from each run)."""
    try:
        files = run_folder_files(session, script)
    except MissingScriptFile as exc:
        raise Gone(f"the group's script files are no longer stored: {exc}") from None
    return {name: data for name, data in files.items() if name != SCRIPT_NAME}


def _result_date(runs: list[Run]) -> date:
    # The day the last counted seed finished: the result's date, and the same on every export.
    finished = [r.finished_at for r in runs if r.finished_at is not None]
    return max(finished).date() if finished else datetime.now(timezone.utc).date()


def load_seed_files(session: Session, store: ArtifactStore, run_ids: list[int], log_file: str = LOG_FILE) -> dict[int, SeedFiles]:
    """Each run's log (train.log, or a script run's stdout.log) and train_gpt.py, read from the store."""
    rows: Iterable[Artifact] = session.scalars(select(Artifact).where(Artifact.run_id.in_(run_ids)).order_by(Artifact.id)) if run_ids else []
    by_run: dict[int, dict[str, Artifact]] = {i: {} for i in run_ids}
    for a in rows:
        by_run[a.run_id][artifact_name(a)] = a  # the newest row of a name wins
    no_code = [i for i in run_ids if CODE_FILE not in by_run[i]]
    if no_code:
        raise Conflict(f"run(s) {', '.join(map(str, no_code))} stored no {CODE_FILE} (they ran before the trainer bundled one); "
                       "a records folder needs the exact trainer each seed ran")
    out = {}
    for run_id in run_ids:
        code = _read(store, by_run[run_id][CODE_FILE], run_id)
        assert code is not None  # read without missing_ok: a missing file raises
        stored_log = by_run[run_id].get(log_file)
        data = _read(store, stored_log, run_id, missing_ok=True) if stored_log else None
        if data is None:
            data = database_log(session, run_id, store)
            if not data:
                raise Conflict(f"run {run_id} has no {log_file}, neither in the artifact store nor in caddie's database")
            out[run_id] = SeedFiles(log=data, train_gpt=code, log_source=LOG_DATABASE)
        else:
            out[run_id] = SeedFiles(log=data, train_gpt=code, log_source=LOG_STORED)
    return out


def _read(store: ArtifactStore, artifact: Artifact, run_id: int, *, missing_ok: bool = False) -> bytes | None:
    name = artifact_name(artifact)
    try:
        return b"".join(read_chunks(store.open(artifact.uri)))
    except (ArtifactMissing, ArtifactOutsideStore) as exc:
        log.warning("run %s: %s cannot be read from the store: %s", run_id, name, exc)
        if missing_ok:
            return None
        raise Gone(f"{name} of run {run_id} is no longer in the artifact store") from None
    except ArtifactStoreError as exc:
        log.warning("run %s: %s cannot be read: %s", run_id, name, exc)
        raise Unavailable(f"the artifact store cannot be read now; try again later ({name} of run {run_id})") from None


def database_log(session: Session, run_id: int, store: ArtifactStore) -> bytes:
    """The run's log as caddie keeps it (service.runs.logs): its chunks while it runs, the one
    file they were archived to once it has ended."""
    return whole_log(session, run_id, store)


def zip_bytes(folder: str, files: Mapping[str, bytes]) -> bytes:
    """A zip of ``folder/<name>`` for every file, in order, with fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16  # rw-r--r-- when unpacked
            zf.writestr(info, data)
    return buf.getvalue()
