"""GET /runs/{id}/metrics is paged (issue 17 item 5d): pages by step, a Link header to the next."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.core.models import Metric

RUNS = "/api/v1/runs"


def test_metrics_come_in_pages_that_join_up(client: TestClient, world, spec, session: Session) -> None:  # noqa: ANN001
    run_id = client.post(RUNS, json=spec(), headers=world.h("alice")).json()["runs"][0]["id"]
    session.add_all(Metric(run_id=run_id, kind="train", step=s, train_loss=1.0 / s, elapsed_ms=s) for s in range(250, 0, -1))
    session.commit()
    steps: list[int] = []
    url: str | None = f"{RUNS}/{run_id}/metrics?limit=100"
    pages = 0
    while url:
        r = client.get(url, headers=world.h("alice"))
        assert r.status_code == 200
        steps += [m["step"] for m in r.json()]
        link = r.headers.get("link")
        url = link[link.index("<") + 1 : link.index(">")] if link else None
        pages += 1
    assert pages == 3 and steps == list(range(1, 251))
    # Bounds are stated: a page over the largest is a 422 naming the field.
    r = client.get(f"{RUNS}/{run_id}/metrics?limit=10001", headers=world.h("alice"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]
    # Another team's run stays unseen, whatever the page.
    assert client.get(f"{RUNS}/{run_id}/metrics?offset=100", headers=world.h("bob")).status_code == 404
