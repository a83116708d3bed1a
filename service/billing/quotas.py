"""A team's storage quota (CADDIE_TEAM_STORAGE_QUOTA_BYTES): artifacts + stored logs + script files.

Checked where a team's bytes are written:

* when a team submits runs (API, web form, a sweep's trials: every script upload comes with a
  submission), on the team's total locked to the submission's commit: a team at or over its
  quota, or whose upload would take it over, is refused with 403 naming the quota, what it uses
  and how to free space (retention removes ended runs' artifacts and scripts after
  CADDIE_RETENTION_DAYS);
* when the worker collects a run's output files into the artifact store: the files that would
  take the team over its quota are not stored (in the order the run lists them, so the model
  comes first; decided on the team's total locked to the commit that registers them, so two runs
  collected at once cannot both take the last room), and the run gets a note (a run event) naming
  the quota, the use and each file left out; the run's figures are kept and it ends as it would
  have. The log stays the run's record and is capped by CADDIE_LOG_MAX_BYTES, not by the quota.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.billing import storage
from service.core.errors import Forbidden
from service.core.models import SCRIPT_KIND, Artifact, Run, RunGroup, ScriptFile, Team


@dataclass(frozen=True)
class StorageUse:
    artifacts: int
    logs: int
    scripts: int

    @property
    def total(self) -> int:
        return self.artifacts + self.logs + self.scripts


def team_storage(session: Session, team_id: int) -> StorageUse:
    """Bytes the team's runs hold, recounted from the history: their artifacts, their stored logs,
    and the script files they name (each once). The definition the running total
    (service.billing.storage) keeps equal; the quota reads that total, not this."""
    # A log is counted where it is: as chunks (log_bytes, or up to the cap) until the run's end
    # archives it, then as its artifacts row (service.runs.logs), never both.
    artifacts, logs = storage.recount_artifacts_and_logs(session, team_id)
    shas: set[str] = set()
    for config in session.scalars(select(RunGroup.config).where(RunGroup.team_id == team_id, RunGroup.kind == SCRIPT_KIND)):
        if isinstance(config, dict):
            shas.add(str(config.get("script")))
            shas.update(str(sha) for sha in (config.get("files") or {}).values())
    scripts = session.scalar(select(func.coalesce(func.sum(ScriptFile.bytes), 0)).where(ScriptFile.sha256.in_(shas))) if shas else 0
    return StorageUse(artifacts, logs, int(scripts or 0))


def check_storage_quota(session: Session, team_id: int, team_name: str, incoming: int, quota: int, used: int | None = None) -> None:
    """Forbidden when the team's storage plus ``incoming`` bytes passes ``quota`` (0: no quota).
    ``used``: ``storage.stored_bytes`` as the caller read it with the team (one query less), trusted
    only when nothing is added; else it is read again under the lock."""
    if quota <= 0:
        return
    if incoming > 0:
        # Held to the submission's commit: a concurrent one reads its bytes. A submission that adds
        # none (a trainer run) takes no room, so it takes no lock either: a team's submits would
        # otherwise queue behind each other (issue 23: submit throughput).
        storage.lock_team(session, team_id)
        used = None  # read under the lock: a concurrent submission's bytes are in
    if _fits(storage.stored_bytes(session, team_id) if used is None else used, incoming, quota):  # the running total: one row and an index range
        return
    # Refused on the running total: recount (repairing any drift) so a refusal is exact and names each kind.
    storage.recount_team(session, team_id)
    use = team_storage(session, team_id)
    if not _fits(use.total, incoming, quota):
        raise Forbidden(
            f"team {team_name!r} storage quota (CADDIE_TEAM_STORAGE_QUOTA_BYTES) is {quota:,} bytes; it uses {use.total:,} "
            f"(artifacts {use.artifacts:,}, logs {use.logs:,}, scripts {use.scripts:,}) and this submission adds {incoming:,}. "
            "Ended runs' artifacts and scripts are removed after CADDIE_RETENTION_DAYS; ask an operator for more."
        )


def _fits(used: int, incoming: int, quota: int) -> bool:
    return used < quota and used + incoming <= quota  # at the quota a new run (its log, its model) has no room


# --- collected outputs -------------------------------------------------------------------------
def fit_outputs(used: int, quota: int, files: Sequence[tuple[str, int]]) -> tuple[list[str], list[tuple[str, int]]]:
    """Which of a run's collected files (name, bytes), in order, fit a team using ``used`` bytes
    of ``quota`` (0: no quota): (names to store, (name, bytes) left out). A file that does not fit
    leaves room for a smaller one after it."""
    if quota <= 0:
        return [name for name, _ in files], []
    kept: list[str] = []
    left: list[tuple[str, int]] = []
    for name, size in files:
        if used + size <= quota:
            kept.append(name)
            used += size
        else:
            left.append((name, size))
    return kept, left


def outputs_left_out_note(team_name: str, quota: int, used: int, left: Sequence[tuple[str, int]]) -> str:
    """The run's note for files that did not fit (names the quota, the use and each file)."""
    files = ", ".join(f"{name} ({size:,} bytes)" for name, size in left)
    return (f"not stored: {files}; team {team_name!r} storage quota (CADDIE_TEAM_STORAGE_QUOTA_BYTES) is {quota:,} bytes "
            f"and it uses {used:,}. Figures are kept. Ended runs' artifacts and scripts are removed after "
            "CADDIE_RETENTION_DAYS; ask an operator for more.")  # fmt: skip


def room_for_run_outputs(session: Session, run_id: int, *, lock: bool = False) -> tuple[str, int]:
    """(team name, bytes the team uses besides this run's artifacts, which a new collect replaces).
    ``lock``: the team's running total stays locked until the caller commits (storage.lock_team),
    so the files it then registers are decided on a figure no other collect can move meanwhile."""
    team_id, team_name = session.execute(select(Team.id, Team.name).join(Run, Run.team_id == Team.id).where(Run.id == run_id)).one()
    if lock:
        storage.lock_team(session, int(team_id))
    own = session.scalar(select(func.coalesce(func.sum(Artifact.bytes), 0)).where(Artifact.run_id == run_id)) or 0
    return str(team_name), storage.stored_bytes(session, int(team_id)) - int(own)
