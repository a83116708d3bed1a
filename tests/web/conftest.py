"""Fixtures of the web tests: the service suite's databases (both backends), app and
callers, plus a browser-like client that signs in through the form."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.core.models import Run, utcnow
from service.core.settings import Settings
from service.results.queries import judge_run

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A TestClient that keeps its cookies like a browser and reads CSRF tokens off pages."""

    def __init__(self, client: TestClient) -> None:
        self.c = client

    def sign_in(self, token: str) -> None:
        r = self.c.post("/signin", data={"token": token, "next": "/runs"}, follow_redirects=False)
        assert r.status_code == 303, r.text

    def csrf(self, page: str = "/runs") -> str:
        m = CSRF.search(self.c.get(page).text)
        assert m, f"no CSRF token on {page}"
        return m[1]

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf_from: str = "/runs") -> Any:
        return self.c.post(path, data={"csrf_token": self.csrf(csrf_from), **(data or {})}, follow_redirects=False)


@pytest.fixture
def browser_for(settings: Settings) -> Iterator[Callable[[str], Browser]]:  # noqa: F811
    """``browser_for("alice")``: a fresh client signed in with that caller's token."""
    clients: list[TestClient] = []

    def make(token: str) -> Browser:
        c = TestClient(create_app(settings))
        c.__enter__()
        clients.append(c)
        b = Browser(c)
        b.sign_in(token)
        return b

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def finish(session: Session, run_id: int, *, val_bpb: float, val_loss: float, status: str = "SUCCEEDED") -> None:  # noqa: F811
    """Write a result the way the executor does (columns, result.json, checks, final state)."""
    session.expire_all()
    run = session.get_one(Run, run_id)
    now = utcnow()
    run.status, run.started_at, run.finished_at = status, now - timedelta(minutes=20), now
    run.val_bpb, run.val_loss, run.artifact_bytes, run.train_seconds, run.eval_seconds = val_bpb, val_loss, 15_000_000, 590.0, 500.0
    run.result = {"status": "succeeded", "total_bytes": 15_000_000, "code_bytes": 60_000, "model_bytes": 14_940_000,
                  "train_seconds": 590.0, "eval_seconds": 500.0, "trainer_revision": "abc", "val_tokens_scored": 10,
                  "val_tokens_total": 10, "ttt_protocol": "score_first", "train_shards": ["fineweb_train_000000.bin"],
                  "val_shards": ["fineweb_val_000000.bin"], "world_size": 8}
    judge_run(run)
    session.commit()
