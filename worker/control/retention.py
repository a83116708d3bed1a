"""Retention: what an ended run leaves behind goes after CADDIE_RETENTION_DAYS (the janitor's round).

A run ended (SUCCEEDED, FAILED, CANCELLED, ABORTED_BEHIND) longer ago than the retention loses
its artifacts (model, train.log, result files: store objects and rows) and its run folder on this
worker (the job's own copy of its log goes with it); script files that no run newer than that (or
still active) names are deleted. The run's row, figures, metrics and stored log (its archive,
service.runs.logs, capped by CADDIE_LOG_MAX_BYTES) stay: results and comparisons keep working. Each run whose
artifacts go gets an event saying so. 0 days: keep everything for ever.

Every round first archives the logs of ended runs still held as chunks (service.runs.logs.
archive_ended_logs): runs that ended without their executor's final commit (a cancel before launch,
the janitor, a store that was full), whatever the retention.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from service.billing.storage import add_bytes
from service.core.models import SCRIPT_KIND, Artifact, Run, RunEvent, ScriptFile
from service.core.status import TERMINAL
from service.core.storage import ArtifactStore, ArtifactStoreError
from service.runs.logs import ARCHIVE_KIND, ARCHIVE_SUFFIX, archive_ended_logs

log = logging.getLogger(__name__)

ACTOR = "janitor"
BATCH = 500  # artifacts removed per round: a backlog drains over a few rounds, never one long transaction


def retention_pass(session: Session, *, store: ArtifactStore, runs_dir: Path | None, days: float, now: datetime) -> int:
    """Remove what expired; returns how many things (artifacts, folders, script files) went."""
    archive_ended_logs(session, store)
    if days <= 0:
        return 0
    cutoff = now - timedelta(days=days)
    expired = select(Run.id).where(Run.status.in_([s.value for s in TERMINAL]), Run.finished_at < cutoff)
    removed = 0

    kept_log = (Artifact.kind == ARCHIVE_KIND) & Artifact.uri.endswith(ARCHIVE_SUFFIX)  # the stored log stays
    rows = session.execute(select(Artifact.id, Artifact.run_id, Artifact.uri, Artifact.bytes, Run.team_id).join(Run, Run.id == Artifact.run_id)
                           .where(Artifact.run_id.in_(expired), ~kept_log).order_by(Artifact.id).limit(BATCH)).all()  # fmt: skip
    gone: dict[int, list[int]] = {}
    freed: dict[int, int] = {}  # team -> bytes: the kept log stays, so each run's bytes fall by exactly these rows'
    for row in rows:
        try:
            store.delete(row.uri)
        except ArtifactStoreError as exc:  # kept for the next round
            log.warning("retention: cannot delete %s of run %s: %s", row.uri, row.run_id, exc)
            continue
        gone.setdefault(row.run_id, []).append(row.id)
        freed[row.team_id] = freed.get(row.team_id, 0) + int(row.bytes or 0)
    for run_id, ids in gone.items():
        session.execute(delete(Artifact).where(Artifact.id.in_(ids)))
        status = session.scalar(select(Run.status).where(Run.id == run_id)) or ""
        session.add(RunEvent(run_id=run_id, at=now, from_status=status, to_status=status, actor=ACTOR,
                             reason=f"{len(ids)} artifact(s) removed: the run ended over {days:g} days ago (CADDIE_RETENTION_DAYS)"))  # fmt: skip
        removed += len(ids)
    for team_id in sorted(freed):  # in team order, last in the transaction: writers take team rows last too
        add_bytes(session, team_id, -freed[team_id])

    if runs_dir is not None and runs_dir.is_dir():
        folders = {int(p.name): p for p in runs_dir.iterdir() if p.name.isdigit() and p.is_dir()}
        if folders:
            for run_id in session.scalars(expired.where(Run.id.in_(list(folders)))):
                shutil.rmtree(folders[run_id], ignore_errors=True)
                removed += 1

    # Script files are shared by content: one goes only when no run that is still wanted names it.
    wanted: set[str] = set()
    live = select(Run.spec).where(Run.kind == SCRIPT_KIND, or_(Run.finished_at.is_(None), Run.finished_at >= cutoff))
    for spec in session.scalars(live):
        if isinstance(spec, dict):
            wanted.add(str(spec.get("script")))
            wanted.update(str(sha) for sha in (spec.get("files") or {}).values())
    old_files = session.scalars(select(ScriptFile.sha256).where(ScriptFile.created_at < cutoff)).all()
    doomed = [sha for sha in old_files if sha not in wanted]
    if doomed:
        session.execute(delete(ScriptFile).where(ScriptFile.sha256.in_(doomed)))
        removed += len(doomed)
    session.commit()
    if removed:
        log.info("retention: removed %d artifacts, run folders and script files of runs ended before %s", removed, cutoff)
    return removed
