"""The scheduler's facts read from the database (service/queue/state.py), on PostgreSQL and SQLite: a run's
expected time comes from its time cap, read out of the stored spec by the query itself."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from service.core.models import utcnow
from service.queue.estimates import expected_seconds
from service.queue.state import load_queue_state
from tests.factories import add_queued_run, make_team

SPECS: list[dict[str, Any]] = [
    {},  # no cap: the track's 600 s
    {"MAX_WALLCLOCK_SECONDS": 90, "NUM_LAYERS": 11},  # a trainer knob
    {"MAX_WALLCLOCK_SECONDS": 0},  # 0: no cap of its own
    {"MAX_WALLCLOCK_SECONDS": None},
    {"MAX_WALLCLOCK_SECONDS": "abc"},  # not a number: the track's
    {"MAX_WALLCLOCK_SECONDS": 1e300},  # huge but finite
    {"script": "f" * 64, "env": {"MAX_WALLCLOCK_SECONDS": "120", "LR": "0.1"}},  # a script run's env variable
    {"script": "f" * 64, "env": {"LR": "0.1"}},
    {"env": "not a mapping"},
    {"MAX_WALLCLOCK_SECONDS": 45.5, "env": {"MAX_WALLCLOCK_SECONDS": "300"}},  # the knob wins, as train_cap_s reads it
    {"MAX_WALLCLOCK_SECONDS": [90]},  # a JSON list or object (an old row): the track's
    {"MAX_WALLCLOCK_SECONDS": {"s": 90}, "env": {"MAX_WALLCLOCK_SECONDS": ["1"]}},
]


@pytest.mark.parametrize("status", ["QUEUED", "RUNNING"])
def test_the_expected_time_of_each_run_is_its_specs_cap_plus_the_overhead(session: Session, status: str) -> None:
    team, user = make_team(session, "caps")
    now = utcnow()
    ids = [add_queued_run(session, team.id, user.id, spec=spec, status=status, started_at=now if status == "RUNNING" else None).id
           for spec in SPECS]  # fmt: skip
    session.commit()
    state = load_queue_state(session, now=now, budget_period=timedelta(days=30), retry_backoff_s=60, run_overhead_s=240)
    got = {q.id: q.expected_s for q in state.queued} if status == "QUEUED" else {a.id: a.remaining_s for a in state.running}
    assert got == {run_id: expected_seconds(spec, 240) for run_id, spec in zip(ids, SPECS, strict=True)}
    assert sorted(set(got.values())) == [285.5, 330.0, 360.0, 840.0, 1e300 + 240]
