"""Lists and the leaderboard read a group's figures from the process's cache while its runs are
unchanged (service.results.queries._summaries, keyed by run_groups.stats_version); any change of a
run's status or figures is seen on the next request, on both backends, and moves the version in
its own transaction (the triggers of migration 0015), while heartbeats and log offsets do not."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.core.models import Run, RunGroup, utcnow
from service.core.status import RunStatus
from service.results import queries
from service.runs.lifecycle import transition
from tests.api.test_api_groups import BOARD, GROUPS, finish, submit


def _group(client: TestClient, world, who: str, key: str) -> dict:
    return next(g for g in client.get(GROUPS, headers=world.h(who)).json() if g["key"] == key)


def test_cached_group_figures_follow_every_change_of_their_runs(client: TestClient, world, session: Session) -> None:
    made = submit(client, world, "alice", seeds=[1, 2, 3])
    key, ids = made["group_key"], [r["id"] for r in made["runs"]]
    assert (_group(client, world, "alice", key)["n"], _group(client, world, "alice", key)["runs_total"]) == (0, 3)
    finish(session, ids[0], val_bpb=1.20, val_loss=2.03)
    g = _group(client, world, "alice", key)
    assert (g["n"], g["val_bpb"]["mean"]) == (1, 1.20)
    assert key in queries._stats  # kept for the next request
    finish(session, ids[1], val_bpb=1.10, val_loss=1.86)
    assert _group(client, world, "alice", key)["val_bpb"]["mean"] == 1.15
    finish(session, ids[2], status="FAILED", reason="boom")
    assert (_group(client, world, "alice", key)["n"], _group(client, world, "alice", key)["not_counted"]) == (2, 1)
    # A figure edited in place (no status change) is seen too.
    session.execute(update(Run).where(Run.id == ids[1]).values(val_bpb=1.00))
    session.commit()
    assert round(_group(client, world, "alice", key)["val_bpb"]["mean"], 6) == 1.10
    # Another team sees the figures once the group is published, from the same cache.
    assert all(g["key"] != key for g in client.get(GROUPS, headers=world.h("bob")).json())
    assert client.post(f"{GROUPS}/{key}/publish", headers=world.h("alice")).status_code == 200
    entry = next(e["group"] for e in client.get(BOARD, headers=world.h("bob")).json()["entries"] if e["group"]["key"] == key)
    assert entry["n"] == 2 and round(entry["val_bpb"]["mean"], 6) == 1.10


def _version(session: Session, key: str) -> int:
    return int(session.scalar(select(RunGroup.stats_version).where(RunGroup.key == key)) or 0)


def test_every_write_of_what_the_figures_read_moves_the_group_version_in_its_transaction(client: TestClient, world, session: Session) -> None:
    made = submit(client, world, "alice", seeds=[1, 2])
    other = submit(client, world, "alice", name="other", config={"XSA_LAST_N": 9}, seeds=[1])
    key, ids = made["group_key"], [r["id"] for r in made["runs"]]
    start, elsewhere = _version(session, key), _version(session, other["group_key"])
    assert start >= 1  # the submission's own inserts moved it
    # Not figures: a heartbeat, a lease, a log offset.
    session.execute(update(Run).where(Run.id == ids[0]).values(heartbeat_at=utcnow(), worker_task_id="w", log_bytes=10))
    session.commit()
    assert _version(session, key) == start
    # The state machine (a Core UPDATE), seen by this transaction before it commits.
    run = session.get_one(Run, ids[0])
    transition(session, run, RunStatus.PROVISIONING, actor="test")
    assert _version(session, key) == start + 1
    session.rollback()  # and gone with it
    assert _version(session, key) == start
    finish(session, ids[0], val_bpb=1.2, val_loss=2.0)  # the executor's ORM commit
    after = _version(session, key)
    assert after > start
    session.execute(update(Run).where(Run.id == ids[0]).values(val_bpb=1.1))  # by hand
    session.commit()
    assert _version(session, key) == after + 1
    session.execute(delete(Run).where(Run.id == ids[1]))
    session.commit()
    assert _version(session, key) == after + 2
    assert _version(session, other["group_key"]) == elsewhere  # other groups keep theirs
