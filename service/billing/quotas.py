"""A team's storage quota (CADDIE_TEAM_STORAGE_QUOTA_BYTES): artifacts + stored logs + script files.

Checked when a team submits runs (the one upload a team makes): a team at or over its quota, or
whose upload would take it over, is refused with 403 naming the quota, what it uses and how to
free space (retention removes ended runs' artifacts and scripts after CADDIE_RETENTION_DAYS).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.errors import Forbidden
from service.core.models import Artifact, Run, RunGroup, ScriptFile
from service.runs.logs import ARCHIVE_KIND, ARCHIVE_SUFFIX
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
    """Bytes the team's runs hold: their artifacts, their stored logs, and the script files they name (each once)."""
    artifacts = session.scalar(select(func.coalesce(func.sum(Artifact.bytes), 0)).join(Run, Run.id == Artifact.run_id).where(Run.team_id == team_id))
    # A log is counted where it is: as chunks (log_bytes, or up to the cap) until the run's end
    # archives it, then as its artifacts row above (service.runs.logs), never both.
    archived = select(Artifact.id).where(Artifact.run_id == Run.id, Artifact.kind == ARCHIVE_KIND, Artifact.uri.endswith(ARCHIVE_SUFFIX)).exists()
    logs = session.scalar(select(func.coalesce(func.sum(func.coalesce(Run.log_truncated_at, Run.log_bytes)), 0)).where(Run.team_id == team_id, ~archived))
    shas: set[str] = set()
    for config in session.scalars(select(RunGroup.config).where(RunGroup.team_id == team_id, RunGroup.kind == SCRIPT_KIND)):
        if isinstance(config, dict):
            shas.add(str(config.get("script")))
            shas.update(str(sha) for sha in (config.get("files") or {}).values())
    scripts = session.scalar(select(func.coalesce(func.sum(ScriptFile.bytes), 0)).where(ScriptFile.sha256.in_(shas))) if shas else 0
    return StorageUse(int(artifacts or 0), int(logs or 0), int(scripts or 0))


def check_storage_quota(session: Session, team_id: int, team_name: str, incoming: int, quota: int) -> None:
    """Forbidden when the team's storage plus ``incoming`` bytes passes ``quota`` (0: no quota)."""
    if quota <= 0:
        return
    use = team_storage(session, team_id)
    if use.total >= quota or use.total + incoming > quota:  # at the quota a new run (its log, its model) has no room
        raise Forbidden(
            f"team {team_name!r} storage quota (CADDIE_TEAM_STORAGE_QUOTA_BYTES) is {quota:,} bytes; it uses {use.total:,} "
            f"(artifacts {use.artifacts:,}, logs {use.logs:,}, scripts {use.scripts:,}) and this submission adds {incoming:,}. "
            "Ended runs' artifacts and scripts are removed after CADDIE_RETENTION_DAYS; ask an operator for more."
        )
