"""A team's stored bytes as a running total, so the storage quota costs one row per submit.

::

    team_storage.bytes  = artifacts + logs      kept by the writers, in their own transaction:
        artifacts registered (worker collect), a log stored (append_log: chunks while the run
        is active; record_archive: the file once it ends), artifacts removed (retention)
    team_script_files   = the shas the team's script groups name (written at submit); the quota
        sums script_files.bytes over them (an index range, one row per distinct file)

The definition stays the full recount (service.billing.quotas.team_storage); the running total
equals it at every commit because each writer adds exactly what its own change did to the recount
(``counted``: the run's contribution read before and after, under the run's row lock), with an
atomic ``UPDATE ... SET bytes = bytes + :n`` (an upsert, so a team with no row yet gets one).
The run's row lock is taken first and the team row last in every writer, so they cannot deadlock.
A writer bound by the quota (a collect, a submission) holds the team with ``lock_team`` before it
decides, and commits what it decided in the same transaction.

What a running total cannot see (a row edited by hand, a writer added later without ``counted``)
the janitor repairs: ``recount_stalest`` recounts a few teams per round, the longest unchecked
first, and a refused submission recounts its team before answering (a refusal is always exact).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.core.models import Artifact, Run, ScriptFile, Team, TeamScriptFile, TeamStorage, utcnow
from service.core.storage import artifact_key

log = logging.getLogger(__name__)

# How a run's archived log is known (service.runs.logs.archive_row; repeated here because the log
# module writes through this one).
LOG_KIND = "log"
LOG_SUFFIX = "/" + artifact_key(0, LOG_KIND, "stdout.log").split("/", 2)[2]


def log_archived(run_id: Any) -> ColumnElement[bool]:
    """The run (id or column) has its log as an artifacts row: its chunk bytes no longer count."""
    return exists().where(Artifact.run_id == run_id, Artifact.kind == LOG_KIND, Artifact.uri.endswith(LOG_SUFFIX))


def counted_log_bytes() -> ColumnElement[int]:
    """What a run's log adds besides its artifacts: the stored chunk bytes (a capped log up to the
    cap) until the log is archived, then nothing (the archive is an artifact)."""
    return case((log_archived(Run.id), 0), else_=func.coalesce(Run.log_truncated_at, Run.log_bytes))


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def add_bytes(session: Session, team_id: int, delta: int) -> None:
    """``team_storage.bytes += delta`` atomically (concurrent writers never lose an update)."""
    if not delta:
        return
    stmt = _insert(session)(TeamStorage).values(team_id=team_id, bytes=delta)
    session.execute(stmt.on_conflict_do_update(index_elements=["team_id"], set_={"bytes": TeamStorage.bytes + stmt.excluded.bytes}))


def lock_team(session: Session, team_id: int) -> None:
    """Hold the team's quota until the caller commits: a quota decision taken under it and the
    bytes it lets in commit together, so two writers of one team (two runs collected at once, two
    submissions, one of each) cannot both take the same room; the second waits, then reads the
    first's bytes (READ COMMITTED reads each statement afresh)."""
    # The team's row, by an update that changes nothing: PostgreSQL holds it FOR NO KEY UPDATE (runs
    # inserted for the team are not held up); SQLite takes its one writer's lock. Not team_storage's
    # row: a run's end holds its group's row and then adds to team_storage, and a submission holds
    # this lock and then its group's row; the order is run, team, group, team_storage.
    session.execute(update(Team).where(Team.id == team_id).values(weight=Team.weight))


def _run_bytes(session: Session, run_id: int) -> tuple[int, int] | None:
    """(team, bytes the run adds to the recount), the run's row locked until commit; None: no run."""
    team_id = session.scalar(select(Run.team_id).where(Run.id == run_id).with_for_update())
    if team_id is None:
        return None
    artifacts = select(func.coalesce(func.sum(Artifact.bytes), 0)).where(Artifact.run_id == run_id).scalar_subquery()
    total = session.scalar(select(artifacts + counted_log_bytes()).where(Run.id == run_id))
    return int(team_id), int(total or 0)


@contextmanager
def counted(session: Session, run_id: int) -> Iterator[None]:
    """Around a change to a run's artifacts or log in the caller's transaction: the team's total
    moves by what the change did to the run's bytes. The caller commits (both or neither land)."""
    before = _run_bytes(session, run_id)
    yield
    session.flush()
    after = _run_bytes(session, run_id)
    if before is not None and after is not None:
        add_bytes(session, after[0], after[1] - before[1])


def name_script_files(session: Session, team_id: int, config: Mapping[str, Any]) -> None:
    """Record the script files a script group of the team names (a second time is a no-op)."""
    shas = sorted({str(config.get("script")), *(str(sha) for sha in (config.get("files") or {}).values())})
    rows = [dict(team_id=team_id, sha256=sha) for sha in shas]
    session.execute(_insert(session)(TeamScriptFile).values(rows).on_conflict_do_nothing(index_elements=["team_id", "sha256"]))


def _script_bytes_query(team_id: int | ColumnElement[int] | InstrumentedAttribute[int]) -> Select[int]:
    query = select(func.coalesce(func.sum(ScriptFile.bytes), 0)).join(TeamScriptFile, TeamScriptFile.sha256 == ScriptFile.sha256)
    return query.where(TeamScriptFile.team_id == team_id)


def stored_bytes(session: Session, team_id: int) -> int:
    """The team's storage as the quota counts it (artifacts + logs + script files), from the
    running total: equal to ``quotas.team_storage(...).total`` at every commit."""
    return int(session.scalar(select(stored_bytes_of(team_id))) or 0)


def stored_bytes_of(team_id: int | ColumnElement[int] | InstrumentedAttribute[int]) -> ColumnElement[int]:
    """``stored_bytes`` as a column: the kept row and the script files' index range, as two scalar
    subqueries; ``team_id`` may be ``Team.id``, so a query that reads the team reads it too (a submit)."""
    kept = select(TeamStorage.bytes).where(TeamStorage.team_id == team_id).scalar_subquery()
    return func.coalesce(kept, 0) + _script_bytes_query(team_id).scalar_subquery()


def recount_artifacts_and_logs(session: Session, team_id: int) -> tuple[int, int]:
    """The full recount of what the running total keeps: (artifact bytes, log chunk bytes)."""
    artifacts = session.scalar(select(func.coalesce(func.sum(Artifact.bytes), 0)).join(Run, Run.id == Artifact.run_id).where(Run.team_id == team_id))
    logs = session.scalar(select(func.coalesce(func.sum(func.coalesce(Run.log_truncated_at, Run.log_bytes)), 0))
                          .where(Run.team_id == team_id, ~log_archived(Run.id)))  # fmt: skip
    return int(artifacts or 0), int(logs or 0)


def recount_team(session: Session, team_id: int, now: datetime | None = None) -> int:
    """Set the team's running total to the full recount and commit; returns the drift repaired
    (recount minus what was kept). The team row is locked first: a writer that changed bytes and
    waits for it adds its change after this commit, to a figure that did not count it."""
    session.execute(_insert(session)(TeamStorage).values(team_id=team_id, bytes=0).on_conflict_do_nothing(index_elements=["team_id"]))
    kept = int(session.scalar(select(TeamStorage.bytes).where(TeamStorage.team_id == team_id).with_for_update()) or 0)
    artifacts, logs = recount_artifacts_and_logs(session, team_id)  # read after the lock (READ COMMITTED: a fresh snapshot)
    session.execute(update(TeamStorage).where(TeamStorage.team_id == team_id).values(bytes=artifacts + logs, recounted_at=now or utcnow()))
    session.commit()
    if artifacts + logs != kept:
        log.warning("storage: team %s kept %d bytes, recount says %d; repaired", team_id, kept, artifacts + logs)
    return artifacts + logs - kept


def recount_stalest(session: Session, *, teams: int = 3, now: datetime | None = None) -> int:
    """The janitor's repair: recount the ``teams`` teams recounted longest ago (never first);
    returns the absolute drift repaired."""
    stale = (select(Team.id).outerjoin(TeamStorage, and_(TeamStorage.team_id == Team.id))
             .order_by(TeamStorage.recounted_at.is_not(None), TeamStorage.recounted_at, Team.id).limit(teams))  # fmt: skip
    return sum(abs(recount_team(session, team_id, now)) for team_id in list(session.scalars(stale)))
