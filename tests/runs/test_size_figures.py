"""The size check's per-team figures (issue 23 item 2): a submit reads the team's latest
SUCCEEDED run, not its history; a new success changes the figures. On both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from service.core.models import Run
from service.runs import size_check
from tests.factories import make_run
from trainer.config import TrainerConfig


def _run(world, status: str, model_bytes: int | None, track: str = "10min_16mb") -> Run:  # noqa: ANN001
    """A run of the seed stack (its stored spec names STACK 2026-03-23: a stored {} is the 2026-04-27 stack)."""
    return make_run(world.team_ids["team-a"], world.user_ids["alice"], group_key="e" * 64, track=track, hardware="H100:8", status=status,
                    spec={"STACK": "2026-03-23"}, model_bytes=model_bytes, code_bytes=60_000)  # fmt: skip


def test_a_submit_reads_the_teams_figure_not_its_history(world, session: Session) -> None:  # noqa: ANN001
    packed = size_check.packed_bytes(TrainerConfig())
    # A long history of which little qualifies: the sample's query would scan all of it.
    session.add(_run(world, "SUCCEEDED", packed // 2))
    session.add_all([_run(world, "SUCCEEDED", None, track="unlimited") for _ in range(300)])
    session.commit()
    team = world.team_ids["team-a"]
    first = size_check.measured(session, team)
    assert first == ([0.5], [60_000])
    statements: list[str] = []
    listen = lambda *args: statements.append(args[2])  # noqa: E731 (conn, cursor, statement, ...)
    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", listen)
    try:
        assert size_check.measured(session, team) == first
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert len(statements) == 1 and "LIMIT" in statements[0].upper()  # the latest success only
    # A new success of the team is in the next figures.
    session.add(_run(world, "SUCCEEDED", packed // 4))
    session.commit()
    ratios, codes = size_check.measured(session, team)
    assert sorted(ratios) == pytest.approx([0.25, 0.5], rel=1e-6) and codes == [60_000, 60_000]
