"""A group as the result pages and the API show it: the group row, its seed statistics and its runs."""

from __future__ import annotations

from dataclasses import dataclass

from service.core.models import SCRIPT_KIND, Run, RunGroup
from service.results.groups import GroupStats, config_diff
from service.runs.scripts.spec import ScriptSpec


@dataclass(frozen=True)
class GroupView:
    """``runs``: the group's runs where the page shows them (a group's own page, compare, export);
    lists and the leaderboard show figures only and leave it empty, with ``total`` saying how many."""

    group: RunGroup
    stats: GroupStats
    runs: tuple[Run, ...]
    total: int | None = None

    @property
    def runs_total(self) -> int:
        return len(self.runs) if self.total is None else self.total

    @property
    def diff(self) -> str:
        """What the group runs, in one line: the shared trainer's changed knobs, or the team's own script."""
        if self.group.kind == SCRIPT_KIND:
            return ScriptSpec.from_json(self.group.config).describe()  # private env values hidden
        return config_diff(self.group.config)
