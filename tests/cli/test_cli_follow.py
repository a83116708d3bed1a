"""`submit --follow` and `logs --follow` while a run moves: a thread plays the
worker's part through the real state machine and the real tables (status,
metrics, log chunks, result columns), and the CLI polls the real API."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from cli import follow
from service.core.db import get_sessionmaker
from service.core.models import LogChunk, Metric, Run
from service.core.status import RunStatus
from service.runs.lifecycle import transition
from tests.cli.conftest import Caddie

LOG_LINES = [
    "step:2/20 train_loss:6.9000 train_time:10ms step_avg:5.00ms\n",
    "step:10/20 val_loss:5.1000 val_bpb:2.3456 train_time:50ms step_avg:5.00ms\n",
    "final_int6_sliding_window_exact val_loss:4.90000000 val_bpb:2.20000000 ünïcode\n",
]


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "POLL_S", 0.05)


@contextmanager
def worker_thread(play: Callable[[], None]) -> Iterator[None]:
    """Run ``play`` in a thread; re-raise its failure in the test."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            play()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    yield
    thread.join(20)
    if errors:
        raise errors[0]


def wait_for_run(db_url: str, name: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with get_sessionmaker(db_url)() as s:
            run_id = s.scalar(select(Run.id).where(Run.name == name, Run.status == "QUEUED"))
        if run_id is not None:
            return run_id
        time.sleep(0.02)
    raise TimeoutError(name)


def play_run(db_url: str, run_id: int, *, succeed: bool, pause_s: float = 0.15) -> None:
    """QUEUED -> PROVISIONING -> RUNNING, metrics and log chunks over time, then the end."""
    maker = get_sessionmaker(db_url)
    with maker() as s:
        run = s.get_one(Run, run_id)
        transition(s, run, RunStatus.PROVISIONING, actor="worker:test")
        transition(s, run, RunStatus.RUNNING, actor="worker:test")
        s.commit()
    offset = 0
    for i, line in enumerate(LOG_LINES):
        time.sleep(pause_s)
        with maker() as s:
            s.add(LogChunk(run_id=run_id, offset=offset, data=line))
            offset += len(line.encode("utf-8"))
            if i == 0:
                s.add(Metric(run_id=run_id, kind="train", step=2, train_loss=6.9, elapsed_ms=10))
            if i == 1:
                s.add(Metric(run_id=run_id, kind="val", step=10, val_loss=5.1, val_bpb=2.3456, elapsed_ms=50))
            s.get_one(Run, run_id).log_bytes = offset
            s.commit()
    time.sleep(pause_s)
    with maker() as s:
        run = s.get_one(Run, run_id)
        if succeed:
            run.val_bpb, run.val_loss, run.artifact_bytes, run.steps = 2.2, 4.9, 123_456, 20
            transition(s, run, RunStatus.SUCCEEDED, actor="worker:test")
        else:
            transition(s, run, RunStatus.FAILED, actor="worker:test", reason="trainer exited with code 1: CUDA out of memory")
        s.commit()


def tiny_spec(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ntrack: unlimited\nhardware: cpu\nconfig: {{STACK: '2026-03-23', ITERATIONS: 20, NUM_LAYERS: 4}}\n")
    return path


def test_submit_follow_ends_with_val_bpb_and_artifact_bytes(caddie: Caddie, tmp_path: Path) -> None:
    with worker_thread(lambda: play_run(caddie.db_url, wait_for_run(caddie.db_url, "follow-ok"), succeed=True)):
        result = caddie.ok("submit", str(tiny_spec(tmp_path, "follow-ok")), "--follow")
    last = result.stdout.strip().splitlines()[-1]
    assert "SUCCEEDED" in last and "val_bpb 2.2000" in last and "artifact 123,456 bytes" in last, result.stdout
    assert "step 20/20" in result.stdout


def test_follow_of_submitted_runs_ends_with_their_results(caddie: Caddie, tmp_path: Path) -> None:
    caddie.ok("submit", str(tiny_spec(tmp_path, "follow-later")))
    run_id = wait_for_run(caddie.db_url, "follow-later")
    with worker_thread(lambda: play_run(caddie.db_url, run_id, succeed=True, pause_s=0.02)):
        result = caddie.ok("follow", str(run_id))
    assert "SUCCEEDED" in result.stdout.strip().splitlines()[-1] and "val_bpb 2.2000" in result.stdout


def test_submit_follow_of_a_failed_run_exits_non_zero_with_the_reason(caddie: Caddie, tmp_path: Path) -> None:
    with worker_thread(lambda: play_run(caddie.db_url, wait_for_run(caddie.db_url, "follow-bad"), succeed=False, pause_s=0.02)):
        result = caddie.cli("submit", str(tiny_spec(tmp_path, "follow-bad")), "--follow")
    assert result.exit_code == 1
    assert "FAILED" in result.stdout and "CUDA out of memory" in result.stdout


def test_logs_follow_prints_the_whole_log_exactly_once(caddie: Caddie, tmp_path: Path) -> None:
    caddie.ok("submit", str(tiny_spec(tmp_path, "tail-me")))
    run_id = wait_for_run(caddie.db_url, "tail-me")
    with worker_thread(lambda: play_run(caddie.db_url, run_id, succeed=True)):
        result = caddie.ok("logs", str(run_id), "--follow")
    assert result.stdout == "".join(LOG_LINES)
    # Without --follow: what is there now, then exit.
    assert caddie.ok("logs", str(run_id)).stdout == "".join(LOG_LINES)
    assert caddie.fails("logs", "987654") == "run 987654 not found"
