"""Team webhooks (service/webhooks): the URL check, the body, queuing with the event, and
delivery to a real HTTP server on 127.0.0.1 (the allow-private setting on), with retries
and giving up; a team's webhook never gets another team's events. Both databases."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.core.models import Run, Sweep, SweepTrial, Team, User, WebhookDelivery, utcnow
from service.core.settings import Settings
from service.core.status import RunStatus
from service.runs.lifecycle import transition
from service.teams import webhook_url as address
from service.teams.webhook_url import BadWebhookUrl, check_url, masked, pin
from service.webhooks import body as bodies
from service.webhooks.outbox import notify_sweep_ended
from service.webhooks.send import deliver_due, retry_delay_s
from worker.celery_app import WEBHOOK_TICK, celery_config

REPO = Path(__file__).resolve().parents[2]

RUNS = "/api/v1/runs"
S = RunStatus


class Receiver:
    """A tiny threaded HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.hosts: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.bodies.append(json.loads(data))
                outer.paths.append(self.path)
                outer.hosts.append(self.headers.get("Host"))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook/secret-path", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private": True, "webhook_timeout_s": 2.0, "webhook_backoff_s": 10.0, "webhook_max_attempts": 3})


@pytest.fixture
def hook_client(hook_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(hook_settings)) as c:
        yield c


def _dead_url() -> str:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def _finish(session: Session, run_id: int, to: RunStatus = S.SUCCEEDED, val_bpb: float | None = 1.2345) -> None:
    """Drive a run to its end as the executor does (through lifecycle.transition) and commit."""
    run = session.get_one(Run, run_id)
    transition(session, run, S.PROVISIONING, actor="test")
    transition(session, run, S.RUNNING, actor="test")
    transition(session, run, to, actor="test", reason="done" if to is S.SUCCEEDED else "exit code 1", also={"val_bpb": val_bpb, "val_loss": None if val_bpb is None else 2.4 * val_bpb})
    session.commit()


def _deliveries(session: Session) -> list[WebhookDelivery]:
    session.expire_all()
    return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


# --- the URL and the body (pure) --------------------------------------------------------------
def test_check_url() -> None:
    public = lambda host, port: ["93.184.216.34"]  # noqa: E731
    inside = lambda host, port: ["10.0.0.7", "93.184.216.34"]  # noqa: E731
    assert check_url(" https://hooks.example.org/services/T/B/x ", allow_private=False, resolver=public) == "https://hooks.example.org/services/T/B/x"
    for bad, why in [("ftp://example.org/x", "http"), ("javascript:alert(1)", "http"), ("https:///x", "no host"),
                     ("https://user:pw@example.org/x", "user or password"), ("https://example.org:99999/", "port"),
                     ("http://127.0.0.1:8000/", "loopback"), ("http://[::1]/", "loopback"), ("http://169.254.169.254/latest", "internal"),
                     ("http://[::ffff:10.1.2.3]/", "private"), ("http://100.64.0.1/", "private")]:  # fmt: skip
        with pytest.raises(BadWebhookUrl, match=why):
            check_url(bad, allow_private=False, resolver=public)
    with pytest.raises(BadWebhookUrl, match="10.0.0.7"):  # a name that resolves inside, even in part
        check_url("https://sneaky.example.org/", allow_private=False, resolver=inside)
    assert check_url("http://127.0.0.1:8000/h", allow_private=True) == "http://127.0.0.1:8000/h"
    assert masked("https://hooks.slack.com/services/T0/B0/secret") == "https://hooks.slack.com/…"
    assert masked(None) is None


def test_body_is_what_chat_tools_read() -> None:
    n = bodies.Notice(bodies.RUN_FINISHED, "team-a", "run", "12", "<!channel> @everyone", "SUCCEEDED", 1.10234, "", "/runs/12")
    b = bodies.body_of(n, "https://caddie.example.org/")
    assert b["event"] == "run.finished" and b["team"] == "team-a" and b["run_id"] == 12 and b["status"] == "SUCCEEDED"
    assert b["val_bpb"] == 1.10234 and b["url"] == "https://caddie.example.org/runs/12"
    assert "&lt;!channel&gt;" in b["text"] and "<!channel>" not in b["text"]  # Slack: no mention from a run's name
    assert b["content"].startswith("[team-a] run 12") and b["allowed_mentions"] == {"parse": []}  # Discord: none either
    assert "val_bpb 1.1023" in b["text"] and b["text"].endswith("https://caddie.example.org/runs/12")
    assert retry_delay_s(1, 30) == 30 and retry_delay_s(3, 30) == 120


# --- the team setting ---------------------------------------------------------------------------
def test_team_admin_sets_the_webhook(client: TestClient, world, session: Session) -> None:  # noqa: ANN001
    url = "/api/v1/teams/team-a"
    r = client.patch(url, json={"webhook_url": "http://127.0.0.1:9/hook/secret"}, headers=world.h("aaron"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "webhook_url" and "inside the deployment" in r.text
    assert "secret" not in r.text  # the path is not echoed
    r = client.patch(url, json={"webhook_url": "ftp://example.org/x"}, headers=world.h("aaron"))
    assert r.status_code == 422
    assert client.patch(url, json={"webhook_url": "https://1.1.1.1/x"}, headers=world.h("alice")).status_code == 403  # a member
    assert client.patch(url, json={"webhook_url": "https://1.1.1.1/x"}, headers=world.h("bob")).status_code == 404  # another team
    assert client.patch(url, json={"weight": 2, "webhook_url": None}, headers=world.h("aaron")).status_code == 403  # weight: global admins
    r = client.patch(url, json={"webhook_url": "https://1.1.1.1/services/secret"}, headers=world.h("aaron"))
    assert r.status_code == 200, r.text
    assert r.json()["webhook"] == "https://1.1.1.1/…"
    listed = client.get("/api/v1/teams", headers=world.h("alice")).json()
    assert [t["webhook"] for t in listed] == ["https://1.1.1.1/…"]
    session.expire_all()
    assert session.scalar(select(Team.webhook_url).where(Team.name == "team-a")) == "https://1.1.1.1/services/secret"
    assert client.patch(url, json={"webhook_url": None}, headers=world.h("root")).json()["webhook"] is None


def test_private_urls_only_with_the_setting(hook_client: TestClient, world) -> None:  # noqa: ANN001
    r = hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": "http://127.0.0.1:9/hook"}, headers=world.h("aaron"))
    assert r.status_code == 200 and r.json()["webhook"] == "http://127.0.0.1:9/…"


# --- a run ends: the team's server gets the body -------------------------------------------------
def test_a_finished_run_reaches_its_team_and_only_its_team(hook_client: TestClient, hook_settings: Settings, world, spec,  # noqa: ANN001
                                                           session: Session, receiver: Receiver) -> None:
    other = Receiver()
    try:
        assert hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": receiver.url()}, headers=world.h("aaron")).status_code == 200
        assert hook_client.patch("/api/v1/teams/team-b", json={"webhook_url": other.url("/b")}, headers=world.h("root")).status_code == 200
        made = hook_client.post(RUNS, json=spec(seeds=[1, 2]), headers=world.h("alice")).json()
        first, second = (r["id"] for r in made["runs"])
        _finish(session, first)
        assert [d.event for d in _deliveries(session)] == ["run.finished"]  # queued with the transition; the group still runs
        assert deliver_due(session, hook_settings) == 1
        assert len(receiver.bodies) == 1 and receiver.paths == ["/hook/secret-path"]
        got = receiver.bodies[0]
        assert (got["event"], got["team"], got["run_id"], got["status"], got["val_bpb"]) == ("run.finished", "team-a", first, "SUCCEEDED", 1.2345)
        assert got["url"].endswith(f"/runs/{first}") and got["text"].startswith(f"[team-a] run {first} (baseline) finished: SUCCEEDED")
        assert "token" not in json.dumps(got).lower() and "NUM_LAYERS" not in json.dumps(got)  # no secrets, no config

        _finish(session, second, S.FAILED, None)
        assert deliver_due(session, hook_settings) == 2  # the run failed; the group has nothing left running
        assert [b["event"] for b in receiver.bodies[1:]] == ["run.failed", "group.finished"]
        group = receiver.bodies[2]
        assert group["group"] == made["group_key"] and group["val_bpb"] == 1.2345 and group["status"] == "not record-eligible"
        assert "1 of 2 runs counted" in group["reason"]
        assert [d.status for d in _deliveries(session)] == ["sent"] * 3

        # Team B's runs go to team B's server; team A's never did.
        b_run = hook_client.post(RUNS, json=spec(seeds=[3]), headers=world.h("bob")).json()["runs"][0]["id"]
        _finish(session, b_run)
        assert deliver_due(session, hook_settings) == 1
        assert [(b["team"], b["run_id"]) for b in other.bodies] == [("team-b", b_run)]
        assert all(b["team"] == "team-a" for b in receiver.bodies) and len(receiver.bodies) == 3
    finally:
        other.close()


def test_no_webhook_queues_nothing_and_cancelled_runs_tell_nothing(hook_client: TestClient, hook_settings: Settings, world, spec,  # noqa: ANN001
                                                                    session: Session, receiver: Receiver) -> None:
    run_id = hook_client.post(RUNS, json=spec(seeds=[1]), headers=world.h("alice")).json()["runs"][0]["id"]
    _finish(session, run_id)
    assert _deliveries(session) == []
    hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": receiver.url()}, headers=world.h("aaron"))
    run_id = hook_client.post(RUNS, json=spec(config={"NUM_LAYERS": 10}, seeds=[2]), headers=world.h("alice")).json()["runs"][0]["id"]
    assert hook_client.post(f"{RUNS}/{run_id}/cancel", headers=world.h("alice")).status_code in (200, 202)
    assert [d.event for d in _deliveries(session)] == []


@pytest.mark.parametrize("root", ["service.api.app", "worker.tasks"])
def test_every_process_that_ends_runs_queues_their_webhooks(root: str) -> None:
    # The outbox hears of a run's end through service.runs.lifecycle.on_run_ended (the runs room
    # imports no webhooks): the API process (a cancel) and the worker (every other end) must have
    # it listening from their first import on, in a fresh interpreter.
    probe = (f"import {root}; from service.runs.lifecycle import run_ended_listeners; "
             "print(' '.join(f.__module__ + '.' + f.__qualname__ for f in run_ended_listeners()))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    assert out == ["service.webhooks.outbox.notify_run_ended"]


def test_a_failure_while_queuing_never_breaks_the_transition(hook_client: TestClient, world, spec, session: Session,  # noqa: ANN001
                                                             receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": receiver.url()}, headers=world.h("aaron"))
    run_id = hook_client.post(RUNS, json=spec(seeds=[1]), headers=world.h("alice")).json()["runs"][0]["id"]

    def broken(*args: object, **kwargs: object) -> dict:
        raise RuntimeError("a bug in the body")

    monkeypatch.setattr(bodies, "body_of", broken)
    _finish(session, run_id)
    session.expire_all()
    assert session.get_one(Run, run_id).status == "SUCCEEDED" and _deliveries(session) == []


# --- a dead endpoint: retried with backoff, then given up ------------------------------------------
def test_a_dead_endpoint_is_retried_then_given_up(hook_client: TestClient, hook_settings: Settings, world, spec, session: Session) -> None:  # noqa: ANN001
    hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": _dead_url()}, headers=world.h("aaron"))
    run_id = hook_client.post(RUNS, json=spec(seeds=[1]), headers=world.h("alice")).json()["runs"][0]["id"]
    _finish(session, run_id)
    assert deliver_due(session, hook_settings) == 0
    [row] = _deliveries(session)
    assert (row.status, row.attempts) == ("pending", 1) and "ConnectError from 127.0.0.1" in row.last_error and "/hook" not in row.last_error
    assert (row.host, row.status_code) == ("127.0.0.1", None)  # no answer
    wait = (row.next_attempt_at - utcnow()).total_seconds()
    assert 8 < wait <= 10  # webhook_backoff_s
    assert deliver_due(session, hook_settings) == 0 and _deliveries(session)[0].attempts == 1  # not due yet
    later = utcnow() + timedelta(hours=1)
    deliver_due(session, hook_settings, now=later)
    [row] = _deliveries(session)
    assert (row.status, row.attempts) == ("pending", 2) and 18 < (row.next_attempt_at - utcnow()).total_seconds() <= 20  # doubled
    deliver_due(session, hook_settings, now=later + timedelta(hours=1))
    [row] = _deliveries(session)
    assert (row.status, row.attempts) == ("failed", 3) and row.last_error.startswith("gave up after 3 tries: ConnectError")
    assert deliver_due(session, hook_settings, now=later + timedelta(hours=2)) == 0 and _deliveries(session)[0].attempts == 3


def test_an_endpoint_that_refuses_is_retried(hook_client: TestClient, hook_settings: Settings, world, spec, session: Session) -> None:  # noqa: ANN001
    refusing = Receiver(status=500)
    try:
        hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": refusing.url()}, headers=world.h("aaron"))
        _finish(session, hook_client.post(RUNS, json=spec(seeds=[1]), headers=world.h("alice")).json()["runs"][0]["id"])
        deliver_due(session, hook_settings)
        [row] = _deliveries(session)
        assert len(refusing.bodies) == 1 and (row.status, row.last_error) == ("pending", "HTTP 500 from 127.0.0.1")
        assert (row.host, row.status_code) == ("127.0.0.1", 500)
    finally:
        refusing.close()


def test_a_private_url_is_refused_at_send_without_the_setting(hook_client: TestClient, hook_settings: Settings, world, spec,  # noqa: ANN001
                                                              session: Session, receiver: Receiver) -> None:
    hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": receiver.url()}, headers=world.h("aaron"))
    _finish(session, hook_client.post(RUNS, json=spec(seeds=[1]), headers=world.h("alice")).json()["runs"][0]["id"])
    strict = hook_settings.model_copy(update={"webhook_allow_private": False, "webhook_max_attempts": 1})
    assert deliver_due(session, strict) == 0 and receiver.bodies == []
    [row] = _deliveries(session)
    assert row.status == "failed" and "inside the deployment" in row.last_error


# --- DNS rebinding: one resolution, and the POST goes to the address that was checked ------------
class Resolver:
    """A DNS that answers from a script, one answer per call (the last one repeats), and counts."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers, self.calls = list(answers), 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


def test_pin_writes_the_checked_address_into_the_url() -> None:
    p = pin("https://hooks.example.org/services/T/B/x?a=1", allow_private=False, resolver=Resolver(["2606:4700::1111", "93.184.216.34"]))
    assert (p.url, p.host_header, p.sni_hostname, p.address) == ("https://93.184.216.34/services/T/B/x?a=1", "hooks.example.org", "hooks.example.org", "93.184.216.34")
    p = pin("http://hooks.example.org:8080/x", allow_private=False, resolver=Resolver(["2606:4700::1111"]))
    assert (p.url, p.host_header, p.sni_hostname) == ("http://[2606:4700::1111]:8080/x", "hooks.example.org:8080", None)
    assert pin("https://1.1.1.1/x", allow_private=False, resolver=Resolver()).sni_hostname is None  # an address: no SNI, no lookup
    with pytest.raises(BadWebhookUrl, match="10.0.0.7"):  # every answer is checked, not only the one connected to
        pin("https://sneaky.example.org/", allow_private=False, resolver=Resolver(["93.184.216.34", "10.0.0.7"]))
    with pytest.raises(BadWebhookUrl, match="resolves to no address"):
        pin("https://empty.example.org/", allow_private=False, resolver=Resolver([]))


def test_the_post_connects_to_the_resolved_address_with_the_name_as_host(hook_client: TestClient, hook_settings: Settings, world, spec,  # noqa: ANN001
                                                                          session: Session, receiver: Receiver) -> None:
    # "hook.invalid" has no DNS answer outside the test's resolver: the POST reaches the server only through the pinned address.
    url = receiver.url(host="hook.invalid")
    assert hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": url}, headers=world.h("aaron")).status_code == 200
    _finish(session, hook_client.post(RUNS, json=spec(seeds=[1]), headers=world.h("alice")).json()["runs"][0]["id"])
    dns = Resolver(["127.0.0.1"])
    assert deliver_due(session, hook_settings, resolver=dns) == 1
    assert dns.calls == 1 and receiver.hosts == [f"hook.invalid:{receiver.server.server_address[1]}"] and receiver.paths == ["/hook/secret-path"]
    [row] = _deliveries(session)
    assert (row.status, row.host, row.status_code) == ("sent", "hook.invalid", 200)  # what the deliveries page shows


def test_a_rebinding_name_cannot_swap_the_checked_address(hook_client: TestClient, hook_settings: Settings, world, spec,  # noqa: ANN001
                                                          session: Session, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name answers a "public" address to the check, then an inside one: resolved once, the POST
    still goes to the checked address. (127.0.0.1 stands in for a public address here, the only
    place a test can run a server; 10.255.255.1 for the inside one.)"""
    hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": receiver.url(host="rebind.invalid")}, headers=world.h("aaron"))
    _finish(session, hook_client.post(RUNS, json=spec(seeds=[1]), headers=world.h("alice")).json()["runs"][0]["id"])
    monkeypatch.setattr(address, "is_public", lambda a: str(a) == "127.0.0.1")
    strict = hook_settings.model_copy(update={"webhook_allow_private": False})
    dns = Resolver(["127.0.0.1"], ["10.255.255.1"])
    assert deliver_due(session, strict, resolver=dns) == 1
    assert dns.calls == 1 and len(receiver.bodies) == 1 and receiver.hosts[0].startswith("rebind.invalid:")

    # The other way round: an inside answer at send time is refused, nothing is sent.
    _finish(session, hook_client.post(RUNS, json=spec(config={"NUM_LAYERS": 10}, seeds=[2]), headers=world.h("alice")).json()["runs"][0]["id"])
    dns = Resolver(["10.255.255.1"])
    assert deliver_due(session, strict.model_copy(update={"webhook_max_attempts": 1}), resolver=dns) == 0
    row = _deliveries(session)[-1]
    assert dns.calls == 1 and row.status == "failed" and "10.255.255.1" in row.last_error and len(receiver.bodies) == 1


# --- a sweep ends ------------------------------------------------------------------------------
def test_a_done_sweep_is_queued(hook_client: TestClient, hook_settings: Settings, world, session: Session, receiver: Receiver) -> None:  # noqa: ANN001
    hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": receiver.url()}, headers=world.h("aaron"))
    team = session.scalar(select(Team).where(Team.name == "team-a"))
    user = session.scalar(select(User).where(User.name == "alice"))
    sweep = Sweep(team_id=team.id, user_id=user.id, name="lr sweep", track="unlimited", hardware="cpu", strategy="grid", spec={},
                  status="done", status_reason="every point of the space was tried")  # fmt: skip
    session.add(sweep)
    session.flush()
    notify_sweep_ended(session, sweep)
    session.commit()
    deliver_due(session, hook_settings)
    [got] = receiver.bodies
    assert (got["event"], got["sweep_id"], got["status"], got["val_bpb"]) == ("sweep.failed", sweep.id, "failed", None)  # no complete trial
    session.add(SweepTrial(sweep_id=sweep.id, number=1, params={"MATRIX_LR": 0.02}, run_ids=[], status="complete", value=1.1, reason=""))
    notify_sweep_ended(session, sweep)
    session.commit()
    deliver_due(session, hook_settings)
    got = receiver.bodies[-1]
    assert (got["event"], got["status"], got["val_bpb"], got["url"]) == ("sweep.finished", "done", 1.1, f"/sweeps/{sweep.id}")


def test_beat_sends_the_webhook_tick_to_the_control_queue(hook_settings: Settings) -> None:
    config = celery_config(hook_settings.model_copy(update={"webhook_tick_s": 7.0}))
    assert config["beat_schedule"]["webhook-tick"]["task"] == WEBHOOK_TICK and config["beat_schedule"]["webhook-tick"]["schedule"] == 7.0
    assert config["task_routes"][WEBHOOK_TICK] == {"queue": "control"}


# --- a group becomes record-eligible --------------------------------------------------------------
RESULT = {"status": "succeeded", "total_bytes": 15_900_000, "code_bytes": 60_000, "model_bytes": 15_840_000, "steps": 7000,
          "train_seconds": 599.0, "eval_seconds": 530.0, "world_size": 8, "trainer_revision": "0123abcd", "val_tokens_scored": 62_021_631,
          "val_tokens_total": 62_021_631, "ttt_protocol": "score_first", "train_shards": ["fineweb_train_000000.bin"],
          "val_shards": ["fineweb_val_000000.bin"], "gpu_name": "NVIDIA H100 80GB HBM3", "code_sha256": "c" * 64, "code_dirty": False,
          "train_fingerprints": ["a" * 64], "val_fingerprints": ["d" * 64]}  # as tests/api/test_api_groups.py: every rule passes


def _finish_with_result(session: Session, run_id: int, val_bpb: float) -> None:
    """As the executor: the result and its rule checks, then the final transition, one commit."""
    from service.results.queries import judge_run

    run = session.get_one(Run, run_id)
    transition(session, run, S.PROVISIONING, actor="test")
    transition(session, run, S.RUNNING, actor="test")
    run.val_bpb, run.val_loss, run.artifact_bytes, run.train_seconds, run.eval_seconds = val_bpb, 2.4 * val_bpb, 15_900_000, 599.0, 530.0
    run.result = dict(RESULT)
    judge_run(run)
    session.flush()
    transition(session, run, S.SUCCEEDED, actor="test", reason="done")
    session.commit()


def test_a_group_that_becomes_record_eligible_is_told_once(hook_client: TestClient, hook_settings: Settings, world, spec,  # noqa: ANN001
                                                           session: Session, receiver: Receiver) -> None:
    h = world.h("alice")
    baseline = hook_client.post(RUNS, json=spec(name="base", seeds=[1, 2, 3]), headers=h).json()["runs"]
    for r, bpb in zip(baseline, (1.300, 1.301, 1.299)):
        _finish_with_result(session, r["id"], bpb)
    hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": receiver.url()}, headers=world.h("aaron"))
    better = hook_client.post(RUNS, json=spec(name="better", config={"NUM_LAYERS": 10}, seeds=[1, 2, 3]), headers=h).json()
    for r, bpb in zip(better["runs"], (1.100, 1.101, 1.099)):
        _finish_with_result(session, r["id"], bpb)
    deliver_due(session, hook_settings)
    events = [(b["event"], b.get("group")) for b in receiver.bodies]
    assert events == [("run.finished", None)] * 3 + [("group.record_eligible", better["group_key"]), ("group.finished", better["group_key"])]
    told = receiver.bodies[3]
    assert told["status"] == "record-eligible" and abs(told["val_bpb"] - 1.1) < 1e-9 and "significant against base" in told["reason"]
    # Once per group: another seed that keeps it eligible tells its own end and the group's, not eligibility again.
    more = hook_client.post(RUNS, json=spec(name="better", config={"NUM_LAYERS": 10}, seeds=[4]), headers=h).json()["runs"][0]["id"]
    _finish_with_result(session, more, 1.100)
    assert [d.event for d in _deliveries(session)][-2:] == ["run.finished", "group.finished"]


def test_two_runs_of_a_group_ending_at_once_tell_the_group_once(hook_client: TestClient, world, spec, db_url: str, session: Session,  # noqa: ANN001
                                                                 receiver: Receiver) -> None:
    from service.core.db import get_sessionmaker

    hook_client.patch("/api/v1/teams/team-a", json={"webhook_url": receiver.url()}, headers=world.h("aaron"))
    first, second = (r["id"] for r in hook_client.post(RUNS, json=spec(seeds=[1, 2]), headers=world.h("alice")).json()["runs"])
    maker = get_sessionmaker(db_url)
    for run_id in (first, second):
        with maker() as s:
            run = s.get_one(Run, run_id)
            transition(s, run, S.PROVISIONING, actor="test")
            transition(s, run, S.RUNNING, actor="test")
            s.commit()
    a, b = maker(), maker()
    try:
        transition(a, a.get_one(Run, first), S.SUCCEEDED, actor="test", also={"val_bpb": 1.2, "val_loss": 2.9})  # not committed yet

        def end_second() -> None:
            transition(b, b.get_one(Run, second), S.SUCCEEDED, actor="test", also={"val_bpb": 1.2, "val_loss": 2.9})
            b.commit()

        other = threading.Thread(target=end_second)
        other.start()
        other.join(0.5)
        assert other.is_alive()  # waits for the first (the group's row, or SQLite's one writer)
        a.commit()
        other.join(10)
    finally:
        a.close()
        b.close()
    assert [d.event for d in _deliveries(session)].count("group.finished") == 1


# --- old deliveries are pruned -----------------------------------------------------------------------
def test_sent_and_failed_deliveries_are_pruned_after_the_retention(world, session: Session) -> None:  # noqa: ANN001
    from service.webhooks.send import prune_deliveries

    team = session.scalar(select(Team).where(Team.name == "team-a"))
    now = utcnow()
    for status, age_days in [("sent", 40), ("failed", 40), ("pending", 40), ("sent", 5), ("failed", 5)]:
        session.add(WebhookDelivery(team_id=team.id, event="run.finished", body={}, status=status, attempts=1, next_attempt_at=now,
                                    last_error="", created_at=now - timedelta(days=age_days)))  # fmt: skip
    session.commit()
    assert prune_deliveries(session, days=0, now=now) == 0  # 0: kept for ever
    assert prune_deliveries(session, days=30, now=now) == 2
    assert sorted((d.status, (now - d.created_at).days) for d in _deliveries(session)) == [("failed", 5), ("pending", 40), ("sent", 5)]
    assert prune_deliveries(session, days=30, now=now) == 0


def test_the_janitor_prunes_deliveries(world, session: Session, settings: Settings) -> None:  # noqa: ANN001
    from worker.control.janitor import janitor_pass
    from worker.launchers.local import LocalLauncher

    team = session.scalar(select(Team).where(Team.name == "team-a"))
    old = utcnow() - timedelta(days=10)
    session.add(WebhookDelivery(team_id=team.id, event="run.finished", body={}, status="sent", attempts=1, next_attempt_at=old, last_error="", created_at=old))
    session.commit()
    janitor_pass(session, launcher=LocalLauncher(settings), settings=settings.model_copy(update={"webhook_retention_days": 30}), enqueue=lambda _: None)
    assert len(_deliveries(session)) == 1
    janitor_pass(session, launcher=LocalLauncher(settings), settings=settings.model_copy(update={"webhook_retention_days": 7}), enqueue=lambda _: None)
    assert _deliveries(session) == []
