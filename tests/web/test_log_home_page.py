"""The run page's log tail reads an ended run's log from its archive (service.runs.logs), capped or not."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.core.settings import Settings
from service.core.storage import make_artifact_store
from service.runs.logs import append_log, record_archive, write_archive
from tests.web.conftest import finish
from tests.world import World


def test_an_archived_log_is_tailed_on_the_run_page(world: World, browser_for, session: Session, settings: Settings) -> None:  # noqa: ANN001
    b = browser_for(world.tokens["alice"])
    body = {"name": "archived", "track": "10min_16mb", "hardware": "H100:8", "config": {}, "seeds": [1]}
    run_id = b.c.post("/api/v1/runs", json=body, headers=world.h("alice")).json()["runs"][0]["id"]
    head = "".join(f"line {i}\n" for i in range(9000))  # past the page's tail: it begins at a whole line
    append_log(session, run_id, head, log_end=5_000_000, log_truncated_at=len(head))
    session.commit()
    finish(session, run_id, val_bpb=1.2, val_loss=2.0)
    archived = write_archive(session, make_artifact_store(settings), run_id)
    assert archived is not None and record_archive(session, archived)
    session.commit()
    page = b.c.get(f"/runs/{run_id}").text
    assert f"Log cut at {len(head):,} bytes of 5,000,000" in page
    assert "line 8999" in page and "line 0\n" not in page
