"""A capped log is shown as such (issue 17 item 5a): the run's API field and its page say where it was cut."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.core.models import LogChunk, Run, utcnow
from tests.web.conftest import finish
from tests.world import World


def test_a_cut_log_is_stated_on_the_run_and_its_page_tails_what_is_stored(world: World, browser_for, session: Session) -> None:  # noqa: ANN001
    b = browser_for(world.tokens["alice"])
    body = {"name": "loud", "track": "10min_16mb", "hardware": "H100:8", "config": {}, "seeds": [1]}
    run_id = b.c.post("/api/v1/runs", json=body, headers=world.h("alice")).json()["runs"][0]["id"]
    head = "".join(f"line {i}\n" for i in range(100))
    session.add(LogChunk(run_id=run_id, offset=0, data=head, created_at=utcnow(), attempt=1))
    run = session.get_one(Run, run_id)
    run.log_bytes, run.log_truncated_at = 5_000_000, len(head)
    session.commit()
    finish(session, run_id, val_bpb=1.2, val_loss=2.0)
    api = b.c.get(f"/api/v1/runs/{run_id}", headers=world.h("alice")).json()
    assert api["log_truncated_at"] == len(head) and api["log_bytes"] == 5_000_000
    page = b.c.get(f"/runs/{run_id}").text
    assert f"Log cut at {len(head):,} bytes of 5,000,000" in page
    assert "line 99" in page  # the tail of what is stored, not an empty tail past the cut
