"""A group as the result pages and the API show it: the group row, its seed statistics and its runs."""

from __future__ import annotations

from dataclasses import dataclass

from service.core.models import Run, RunGroup
from service.results.groups import GroupStats, config_diff
from service.runs.scripts.spec import SCRIPT_KIND, ScriptSpec


@dataclass(frozen=True)
class GroupView:
    group: RunGroup
    stats: GroupStats
    runs: tuple[Run, ...]

    @property
    def diff(self) -> str:
        """What the group runs, in one line: the shared trainer's changed knobs, or the team's own script."""
        if self.group.kind == SCRIPT_KIND:
            return ScriptSpec.from_json(self.group.config).describe()  # private env values hidden
        return config_diff(self.group.config)
