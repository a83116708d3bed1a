"""Submit over REST, run through a real `celery worker` and the local launcher with
the real trainer, and check what lands in the database and the artifact store;
cancel, kill the worker, restart Redis."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from service.core.models import Artifact, LogChunk, RunEvent
from service.core.storage import LocalArtifactStore
from service.runs.logs import whole_log
from tests.e2e.conftest import TINY, Stack
from tests.redis_server import PrivateRedis

pytestmark = pytest.mark.e2e

def db(stack: Stack) -> Session:
    return Session(create_engine(stack.db_url))


def transitions(stack: Stack, run_id: int) -> list[tuple[str | None, str, str]]:
    with db(stack) as s:
        return [(e.from_status, e.to_status, e.actor) for e in s.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id))]


def attempts_dirs(stack: Stack, run_id: int) -> list[Path]:
    """One folder per trainer launch (the local launcher makes attempt-N atomically)."""
    return sorted((stack.home / "runs" / str(run_id)).glob("attempt-*"))


def trainer_pids(workdir: Path) -> list[int]:
    child = json.loads((workdir / "child.json").read_text())
    return [child["pid"]]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_run_goes_from_rest_to_result_metrics_log_and_artifact(stack: Stack) -> None:
    [run_id] = stack.submit(TINY, seed=7)
    run = stack.wait_for(run_id, {"SUCCEEDED", "FAILED", "CANCELLED"}, 150)
    assert run["status"] == "SUCCEEDED", run["status_reason"]
    assert run["val_bpb"] is not None and 0 < run["val_bpb"] < 20
    assert run["artifact_bytes"] > 0 and run["steps"] == 6
    with stack.client() as c:
        metrics = c.get(f"/runs/{run_id}/metrics").json()
        logs = c.get(f"/runs/{run_id}/logs", params={"offset": 0}).json()
    assert {m["kind"] for m in metrics} == {"train", "val"}
    assert [m["step"] for m in metrics if m["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert logs["done"] and "final_ttt" in logs["data"] and logs["next_offset"] == run["log_bytes"]
    assert [t[:2] for t in transitions(stack, run_id)] == [
        (None, "QUEUED"), ("QUEUED", "PROVISIONING"), ("PROVISIONING", "RUNNING"), ("RUNNING", "SUCCEEDED")
    ]
    with db(stack) as s:
        arts = {a.kind + ":" + Path(a.uri).name: a for a in s.scalars(select(Artifact).where(Artifact.run_id == run_id))}
    model = arts["model:model.int6.ptz"]
    path = Path(model.uri.removeprefix("file://"))
    assert path.is_relative_to(stack.home / "artifacts") and hashlib.sha256(path.read_bytes()).hexdigest() == model.sha256
    assert {"result:result.json", "log:stdout.log", "metrics:metrics.jsonl"} <= set(arts)
    assert len(attempts_dirs(stack, run_id)) == 1
    # The API (another process) serves what the worker stored, from the same settings.
    with stack.client() as c:
        listed = {a["name"]: a for a in c.get(f"/runs/{run_id}/artifacts").json()}
        served = c.get(f"/runs/{run_id}/artifacts/model.int6.ptz")
    assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == model.sha256 == listed["model.int6.ptz"]["sha256"]


def test_cancel_mid_run_stops_the_trainer_within_10_seconds(stack: Stack) -> None:
    [run_id] = stack.submit({**TINY, "ITERATIONS": 5000}, seed=8)
    stack.wait_for(run_id, {"RUNNING"}, 90, log_bytes=1)
    [workdir] = attempts_dirs(stack, run_id)
    pids = trainer_pids(workdir)
    assert all(alive(p) for p in pids)
    with stack.client() as c:
        assert c.post(f"/runs/{run_id}/cancel").status_code in (200, 202)
    t0 = time.monotonic()
    run = stack.wait_for(run_id, {"CANCELLED", "FAILED", "SUCCEEDED"}, 10)
    assert run["status"] == "CANCELLED" and time.monotonic() - t0 < 10
    assert not any(alive(p) for p in pids)
    assert transitions(stack, run_id)[-1] == ("RUNNING", "CANCELLED", "worker")


def test_killed_worker_the_run_finishes_once_with_one_trainer(stack: Stack) -> None:
    [run_id] = stack.submit({**TINY, "ITERATIONS": 30}, seed=9)
    stack.wait_for(run_id, {"RUNNING"}, 90, log_bytes=1)
    stack.kill_worker()
    time.sleep(1.0)
    stack.start_worker()
    run = stack.wait_for(run_id, {"SUCCEEDED", "FAILED", "CANCELLED"}, 150)
    assert run["status"] == "SUCCEEDED", run["status_reason"]
    assert len(attempts_dirs(stack, run_id)) == 1  # launched exactly once
    events = transitions(stack, run_id)
    assert sum(1 for e in events if e[1] == "RUNNING" and e[0] != "RUNNING") == 1
    assert sum(1 for e in events if e[1] == "SUCCEEDED") == 1
    with db(stack) as s:
        # Ended: the log's one home is its archive in the store (service.runs.logs), no chunk left.
        assert s.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == run_id)) == 0
        data = whole_log(s, run_id, LocalArtifactStore(stack.home / "artifacts"))
    assert len(data) == run["log_bytes"]  # archive_log stops at a gap: all of it there means contiguous chunks
    text = data.decode()
    assert text.count("final_ttt val_loss") == 1 and text.count("step:30/30 train_loss") == 1


@pytest.mark.slow
def test_redis_restart_loses_messages_but_no_run(stack: Stack, redis_server: PrivateRedis) -> None:
    """Redis keeps nothing on disk here, so queued messages are gone after the restart;
    the scheduler and the janitor re-derive the work from the database. The worker
    may exit on the lost connection; like in production, a supervisor restarts it."""
    run_ids = stack.submit(TINY, seeds=[11, 12])
    redis_server.restart(down_s=0.5)  # the session's own server, never the machine's
    for run_id in run_ids:
        run = stack.wait_for(run_id, {"SUCCEEDED", "FAILED", "CANCELLED"}, 120, supervise=True)
        assert run["status"] == "SUCCEEDED", run["status_reason"]
        assert len(attempts_dirs(stack, run_id)) == 1


def _first_event_at(stack: Stack, run_id: int, to_status: str) -> float:
    with db(stack) as s:
        at = s.scalar(select(RunEvent.at).where(RunEvent.run_id == run_id, RunEvent.to_status == to_status).order_by(RunEvent.id).limit(1))
    assert at is not None, (run_id, to_status)
    return at.timestamp()


@pytest.mark.slow
def test_a_broker_outage_leaves_no_slot_idle(stack: Stack, redis_server: PrivateRedis) -> None:
    """Redis down 3 s with a run training and one queued (1 slot): once the broker is back,
    the queued run starts within 15 s of the slot coming free. Before, Kombu's failed
    reconnect left the worker in a warm shutdown that took no run until its current ones ended."""
    [first] = stack.submit({**TINY, "ITERATIONS": 40}, seed=21)
    stack.wait_for(first, {"RUNNING"}, 90, log_bytes=1)
    [second] = stack.submit(TINY, seed=22)
    redis_server.restart(down_s=3.0)  # the session's own server, never the machine's
    back = time.time()
    for run_id in (first, second):
        run = stack.wait_for(run_id, {"SUCCEEDED", "FAILED", "CANCELLED"}, 150, supervise=True)
        assert run["status"] == "SUCCEEDED", run["status_reason"]
        assert len(attempts_dirs(stack, run_id)) == 1
    slot_free = max(back, _first_event_at(stack, first, "SUCCEEDED"))
    assert _first_event_at(stack, second, "PROVISIONING") - slot_free < 15
