"""A team's storage quota (CADDIE_TEAM_STORAGE_QUOTA_BYTES): artifacts + stored logs + script files.

Checked when a team submits runs (the one upload a team makes): a team at or over its quota, or
whose upload would take it over, is refused with 403 naming the quota, what it uses and how to
free space (retention removes ended runs' artifacts and scripts after CADDIE_RETENTION_DAYS).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.billing import storage
from service.core.errors import Forbidden
from service.core.models import RunGroup, ScriptFile
from service.runs.scripts.spec import SCRIPT_KIND


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


def check_storage_quota(session: Session, team_id: int, team_name: str, incoming: int, quota: int) -> None:
    """Forbidden when the team's storage plus ``incoming`` bytes passes ``quota`` (0: no quota)."""
    if quota <= 0:
        return
    if _fits(storage.stored_bytes(session, team_id), incoming, quota):  # the running total: one row and an index range
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
