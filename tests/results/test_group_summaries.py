"""Lists and the leaderboard read a group's figures from the process's cache while its runs are
unchanged (service.results.queries._summaries); any change of a run's status or figures is seen
on the next request, on both backends."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from service.core.models import Run
from service.results import queries
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
