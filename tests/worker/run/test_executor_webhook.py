"""A run driven by the real executor (local launcher, stand-in trainer) ends, and its team's webhook,
a real HTTP server on 127.0.0.1, receives the body from the webhook tick; the run's end does not wait
for it, and a dead endpoint never changes the run's outcome."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from service.core.models import Run, RunEvent, Team, User, WebhookDelivery, utcnow
from service.core.settings import Settings
from service.teams.accounts import create_team, create_user
from service.webhooks.send import deliver_due
from tests.factories import add_queued_run
from tests.fresh_db import fresh_database
from tests.webhooks.test_webhooks import Receiver, _dead_url
from tests.worker.run.test_executor import STAND_IN, _maker, go


@pytest.fixture(scope="module")
def maker():
    with fresh_database() as url:
        m = _maker(url)
        with m() as s:
            create_team(s, "quiet")
            create_user(s, "quiet")
            s.commit()
        yield m


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return Settings(home=tmp_path, trainer_command=[sys.executable, str(script)], gpu_count=0, heartbeat_s=0.5, poll_interval_s=0.05,
                    cancel_grace_s=1.0, webhook_allow_private=True, webhook_timeout_s=2.0)  # fmt: skip


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _run(maker, team_name: str, webhook: str | None) -> int:  # noqa: ANN001
    with maker() as s:
        team = s.scalar(select(Team).where(Team.name == team_name))
        team.webhook_url = webhook
        user = s.scalar(select(User.id).where(User.name == team_name))
        run = add_queued_run(s, team.id, user, name="hooked", seed=5, group_key=f"g-{utcnow().timestamp()}")
        s.commit()
        return run.id


def test_the_executor_ends_a_run_and_the_tick_posts_it(maker, settings: Settings, receiver: Receiver) -> None:  # noqa: ANN001
    quiet = _run(maker, "quiet", None)  # another team, no webhook
    run_id = _run(maker, "exec", receiver.url())
    assert go(maker, settings, quiet) == f"run {quiet} SUCCEEDED"
    assert go(maker, settings, run_id) == f"run {run_id} SUCCEEDED"
    assert receiver.bodies == []  # the executor queued it; it did not send it
    with maker() as s:
        assert deliver_due(s, settings) == 1
    [got] = receiver.bodies
    assert (got["event"], got["team"], got["run_id"], got["status"], got["val_bpb"]) == ("run.finished", "exec", run_id, "SUCCEEDED", 2.5)


def test_a_dead_endpoint_does_not_touch_the_run(maker, settings: Settings) -> None:  # noqa: ANN001
    run_id = _run(maker, "exec", _dead_url())
    assert go(maker, settings, run_id) == f"run {run_id} SUCCEEDED"
    with maker() as s:
        deliver_due(s, settings)
        assert s.get_one(Run, run_id).status == "SUCCEEDED"
        assert [e.to_status for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id))][-1] == "SUCCEEDED"
        row = s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id.desc())).first()
        assert row.status == "pending" and row.attempts == 1 and "ConnectError" in row.last_error
