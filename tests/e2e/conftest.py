"""An end-to-end stack on real processes: PostgreSQL, Redis, the API under uvicorn,
a `celery worker` and `celery beat`, the local launcher and the real trainer on
the offline smoke corpus. Short heartbeats and ticks keep the suite quick."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fresh_db import fresh_database
from tests.redis_server import STACK_REDIS_DBS

REPO = Path(__file__).resolve().parents[2]

# A few seconds of the real trainer on 2 CPU cores (TTT on, small chunks).
TINY: dict[str, Any] = {
    "STACK": "2026-03-23", "NUM_LAYERS": 2, "MODEL_DIM": 64, "NUM_HEADS": 4, "NUM_KV_HEADS": 2, "TRAIN_SEQ_LEN": 64, "EVAL_SEQ_LEN": 64,
    "TRAIN_BATCH_TOKENS": 512, "GRAD_ACCUM_STEPS": 1, "ITERATIONS": 6, "WARMUP_STEPS": 0, "WARMDOWN_ITERS": 2,
    "MAX_WALLCLOCK_SECONDS": 0, "XSA_LAST_N": 1, "BIGRAM_VOCAB_SIZE": 128, "BIGRAM_DIM": 16, "ROPE_DIMS": 8,
    "VE_DIM": 16, "VE_LAYERS": "1", "VAL_TOKENS_LIMIT": 1024, "EVAL_STRIDE": 32, "EVAL_BATCH_SEQS": 8,
    "TTT_ENABLED": 1, "TTT_CHUNK_TOKENS": 512, "TTT_EPOCHS": 1, "TTT_BATCH_SEQS": 4, "TRAIN_LOG_EVERY": 1, "ZSTD_LEVEL": 3,
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, home: Path, env: dict[str, str], db_url: str) -> None:
        self.home = home
        self.env = env
        self.db_url = db_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.beat: subprocess.Popen[bytes] | None = None
        self._n = 0
        self.revived = 0

    # --- processes ---------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self._n += 1
        out = open(self.home / f"{name}-{self._n}.log", "wb")
        return subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start_api(self) -> None:
        self.api = self._spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--port", str(self.port), "--log-level", "warning"])
        end = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end, "the API did not come up"
            time.sleep(0.1)

    def start_worker(self) -> None:
        self.worker = self._spawn(
            "worker",
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "runs,control", "-P", "threads", "-c", "3",
             "--loglevel", "INFO", "-n", f"e2e{self._n}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        )  # fmt: skip

    def start_beat(self) -> None:
        self.beat = self._spawn("beat", [sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel", "INFO"])

    def revive(self) -> None:
        """What a process supervisor does (docker's restart policy, `caddie up`):
        start the worker or beat again if it exited. Celery's worker can exit on a
        lost broker connection (Kombu fails restoring unacked messages)."""
        if self.worker is not None and self.worker.poll() is not None:
            self.revived += 1
            self.start_worker()
        if self.beat is not None and self.beat.poll() is not None:
            self.revived += 1
            self.start_beat()

    def kill_worker(self) -> None:
        assert self.worker is not None
        os.kill(self.worker.pid, signal.SIGKILL)
        self.worker.wait(10)

    def stop(self) -> None:
        for proc in (self.worker, self.beat, self.api):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (self.worker, self.beat, self.api):
            if proc is not None:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        # Jobs run in their own sessions and outlive the worker on purpose; a
        # failed test must not leave trainers behind.
        for child in self.home.glob("runs/*/attempt-*/child.json"):
            try:
                os.killpg(json.loads(child.read_text())["pgid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError, KeyError):
                pass

    def explain(self, lines: int = 15) -> str:
        """For a failure message: which of the stack's processes have exited, and the last lines of each log
        (a CI run leaves nothing else behind to read)."""
        out = [f"home {self.home}"]
        for name, proc in (("api", self.api), ("worker", self.worker), ("beat", self.beat)):
            out.append(f"{name}: {'running' if proc is not None and proc.poll() is None else f'exited {proc.returncode if proc else None}'}")
        for log_file in sorted(self.home.glob("worker-*.log")):
            tail = [line for line in log_file.read_text(errors="replace").splitlines() if "_tick[" not in line][-lines:]
            out += [f"--- {log_file.name}", *tail]
        return "\n".join(out)

    # --- REST ------------------------------------------------------------------------------
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    def submit(self, config: dict[str, Any], **body: Any) -> list[int]:
        with self.client() as c:
            r = c.post("/runs", json={"name": "e2e", "track": "unlimited", "hardware": "cpu", "config": config, **body})
            assert r.status_code == 201, r.text
            return [run["id"] for run in r.json()["runs"]]

    def run(self, run_id: int) -> dict[str, Any]:
        with self.client() as c:
            r = c.get(f"/runs/{run_id}")
            assert r.status_code == 200, r.text
            return r.json()

    def wait_for(self, run_id: int, statuses: set[str], timeout: float, *, log_bytes: int = 0, supervise: bool = False) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            if supervise:
                self.revive()
            run = self.run(run_id)
            if run["status"] in statuses and run.get("log_bytes", 0) >= log_bytes:
                return run
            assert time.monotonic() < end, f"run {run_id} is {run['status']} ({run.get('status_reason', '')}) after {timeout} s, wanted {statuses}\n{self.explain()}"
            time.sleep(0.1)


def _bootstrap_admin(db_url: str) -> str:
    from service.core.db import get_sessionmaker
    from service.core.migrate import upgrade
    from service.teams.accounts import create_admin

    upgrade(db_url)
    with get_sessionmaker(db_url)() as session:
        token = create_admin(session, "e2e", "e2e-admin", "e2e")
        session.commit()
    return token


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, smoke_corpus_dir: Path) -> Iterator[Stack]:
    # A database of its own: the stack's scheduler and janitor act on every run they see.
    with fresh_database() as pg_url:
        yield from _stack(tmp_path_factory, pg_url, redis_url, smoke_corpus_dir)




def _stack(tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_url: str, smoke_corpus_dir: Path) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("e2e_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADDIE_")}
    env.update(
        PYTHONPATH=str(REPO),
        CADDIE_HOME=str(home),
        CADDIE_DATABASE_URL=pg_url,
        CADDIE_ON_SUBMIT_HOOK="worker.notify:runs_submitted",
        CADDIE_LAUNCHER="local",
        CADDIE_GPU_COUNT="0",
        CADDIE_HEARTBEAT_S="1",
        CADDIE_STALE_HEARTBEATS="3",
        CADDIE_POLL_INTERVAL_S="0.1",
        CADDIE_SCHEDULER_TICK_S="1",
        CADDIE_JANITOR_TICK_S="1",
        CADDIE_VISIBILITY_TIMEOUT_S="20",
        CADDIE_MAX_CONCURRENT_RUNS="1",
        CADDIE_CANCEL_GRACE_S="3",
        CADDIE_DATA_ROOT=str(smoke_corpus_dir),  # holds datasets/fineweb10B_sp1024 and tokenizers/fineweb_1024_bpe.model
        CADDIE_ENV_OFFLINE="1",  # a script run's declared environment is built from local wheels only: nothing downloads
        CADDIE_ENV_WHEELS=str(home / "wheels"),
        OMP_NUM_THREADS="1",
    )
    if redis_url:  # else the SQLite broker under CADDIE_HOME, as `caddie up` uses: a queue no other stack shares
        # A Redis database of its own: stacks alive at once (the session's e2e stack and a module's) would
        # otherwise share the `runs` queue, and one's worker would take the other's runs (seen: a sweep's
        # trials run against the e2e stack's database, "already SUCCEEDED", and the sweep never ending).
        env["CADDIE_BROKER_URL"] = f"{redis_url.rsplit('/', 1)[0]}/{next(STACK_REDIS_DBS)}"
    s = Stack(home, env, pg_url)
    s.token = _bootstrap_admin(pg_url)
    s.start_api()
    s.start_worker()
    s.start_beat()
    try:
        yield s
    finally:
        s.stop()
