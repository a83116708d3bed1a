"""Fault suite: caddie's whole stack under injected faults (run by hand, not a test).

    python bench/faults.py [--only NAME ...] [--out bench/results/faults.md]

Starts a PostgreSQL and a Redis of its own (on free ports, in a temporary
folder: the shared servers are never touched), then the API (uvicorn), a `runs`
worker, a `control` worker and beat, with the local launcher and a stand-in
trainer, all with caddie's default settings except capacity (2 runs at once)
and the trainer command. A supervisor thread restarts any of the four
processes one second after it exits, as docker's restart policy would.

Faults, one scenario each: kill -9 of the runs worker, the control worker,
beat, the API (during idempotent submits), a job's wrapper, its trainer; a
broker restart (Redis without persistence: its messages are lost) with runs
queued and running; a PostgreSQL restart (immediate stop) mid-run; 2 teams x
100 runs on 2 slots; cancels racing a run's end (sent 0 to 0.2 s after its trainer
wrote its result); issue 21's launch gap (the runs worker SIGKILLed between the
launcher's submit and the commit recording it: bench/_fault_hooks.py), a hung trainer
(silent, never ending), a run folder that refuses writes (RLIMIT_FSIZE on the
stand-in: no loop device or tmpfs is mounted, so a full disk is simulated by EFBIG),
and a node dying under its job (its wrapper and trainer killed at once: relaunched at
once, from step 0, each attempt billed).

Per scenario it writes, in bench/results/faults.md:

* lost: runs of the scenario that did not end as expected (SUCCEEDED; for the
  trainer killed under its wrapper, FAILED with the signal named);
* duplicate launches: trainer launches beyond one per attempt (attempt folders
  minus attempts);
* duplicate runs: runs beyond one per idempotency key and seed;
* answers wrong: runs that ended as expected but whose reason or stored result does not
  say what happened (launch gap, hang, disk full);
* nodes leaked: cluster rows left UP or owned with no active run, plus trainer processes
  of the scenario still alive after its runs ended (launch gap, hang, disk full);
* over capacity: most trainers alive at once (from the stand-in's start/end
  marks) beyond the 2 slots;
* recovery: from the fault until no run of the scenario is stranded any more:
  the later of (a) the last moment one was active with nobody renewing its
  heartbeat (older than heartbeat_s + 2 s) or queued (outside its retry
  backoff) while a slot was free for longer than a scheduler tick + 1 s, and
  (b) when the last run whose executor died with the fault was taken over by a
  new one. For the API: until /healthz answers again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from service.billing.accounting import Transition, billed_attempts  # noqa: E402
from service.core.models import Run, RunEvent  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.core.status import is_node_lost  # noqa: E402
from worker.run.lease import holder_gone, is_dispatch_mark  # noqa: E402

DEFAULTS = Settings(_env_file=None)  # caddie's defaults: the numbers the scenarios run under
CAPACITY = 2
RESTART_DELAY_S = 1.0
ACTIVE = ("PROVISIONING", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")

# The stand-in trainer: ITERATIONS steps of 0.1 s. It marks its start and end in
# marks.jsonl of its own work dir (the only folder a sealed job can write that the
# suite sees; its run and attempt are the folder's names).
MARKS = "marks.jsonl"
STAND_IN = r'''
import json, os, time
cwd = os.getcwd()
run, attempt = os.path.basename(os.path.dirname(cwd)), os.path.basename(cwd)
def mark(kind):
    with open(os.path.join(cwd, "MARKS"), "a") as fh:
        fh.write(json.dumps({"run": int(run), "attempt": attempt, "pid": os.getpid(), "kind": kind, "t": time.time()}) + "\n")
mark("start")
seed = int(os.environ.get("SEED", "1"))
if seed == FSIZE_SEED:  # "disk full": this process may write no file past FSIZE_LIMIT bytes (Python ignores SIGXFSZ: EFBIG)
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
steps = int(os.environ.get("ITERATIONS", "10"))
for i in range(1, steps + 1):
    print(f"step:{i}/{steps} train_loss:{5 - i / steps:.4f} train_time:{i * 100}ms step_avg:100.00ms", flush=True)
    time.sleep(0.1)
    if seed == HANG_SEED and i == 3:  # "hang": alive, silent, never ends
        mark("hang")
        while True:
            time.sleep(3600)
with open("model.int6.ptz", "wb") as fh:
    fh.write(b"weights" * (FSIZE_LIMIT // 7 + 1 if seed == FSIZE_SEED else 1))
with open("result.json", "w") as fh:
    json.dump({"status": "succeeded", "val_bpb": 1.5, "val_loss": 2.5, "total_bytes": 7, "steps": steps}, fh)
mark("end")
'''
HANG_SEED, FSIZE_SEED, FSIZE_LIMIT = 9001, 9002, 64 * 1024
STAND_IN = STAND_IN.replace("MARKS", MARKS).replace("HANG_SEED", str(HANG_SEED)).replace("FSIZE_SEED", str(FSIZE_SEED)).replace("FSIZE_LIMIT", str(FSIZE_LIMIT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


# --- servers of our own --------------------------------------------------------------------
class Postgres:
    def __init__(self, root: Path) -> None:
        self.dir = root / "pg"
        self.port = free_port()

    def init(self) -> None:
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.dir.parent, "postgres", "postgres")
        subprocess.run(as_postgres(["initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True)  # fmt: skip
        self.start()
        admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text("CREATE DATABASE caddie"))
        admin.dispose()

    def url(self, db: str = "caddie") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(as_postgres(["pg_ctl", "-D", str(self.dir), *args]), check=True, capture_output=True)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._ctl("-l", str(self.dir / "server.log"), "-w", "-o", opts, "start")

    def crash(self) -> None:
        self._ctl("-m", "immediate", "stop")  # no shutdown checkpoint: a crash, as far as clients can tell

    def stop(self) -> None:
        try:
            self._ctl("-m", "fast", "stop")
        except subprocess.CalledProcessError:
            pass


class Redis:
    def __init__(self, root: Path) -> None:
        self.dir = root / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        import redis

        end = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.RedisError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


# --- caddie's processes, supervised ---------------------------------------------------------
class Stack:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app"]
        quiet = ["--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.argv = {
            "api": [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--port", str(self.port), "--log-level", "warning"],
            "runs worker": [sys.executable, str(REPO / "bench" / "_fault_hooks.py"), "-A", "worker.celery_app", "worker", "-Q", "runs", "-P", "threads", "-c", str(CAPACITY + 1), "-n", "runs@%h", *quiet],
            "control worker": [*celery, "worker", "-Q", "control", "-P", "solo", "-n", "control@%h", *quiet],
            "beat": [*celery, "beat", "--loglevel", "WARNING", "-s", str(home / "celerybeat-schedule")],
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = dict.fromkeys(self.argv, 0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)

    def _spawn(self, name: str) -> None:
        log = open(self.home / f"{name.replace(' ', '-')}.log", "ab")
        self.procs[name] = subprocess.Popen(self.argv[name], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        for name in self.argv:
            self._spawn(name)
        self._supervisor.start()
        self.wait_api(60)
        time.sleep(3)  # the workers connect

    def _supervise(self) -> None:
        while not self._stop.wait(0.1):
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None:
                    time.sleep(RESTART_DELAY_S)
                    with self._lock:
                        if self._stop.is_set():
                            return
                        self.restarts[name] += 1
                        self._spawn(name)

    def kill(self, name: str) -> None:
        try:
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def api_up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_api(self, limit: float) -> float:
        t0 = time.monotonic()
        while not self.api_up():
            if time.monotonic() - t0 > limit:
                raise SystemExit("the API did not come up")
            time.sleep(0.05)
        return time.monotonic() - t0

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


# Celery's line for each task a worker ran (its log at INFO): when it ended, the task, how long it took.
TASK_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/[^\]]*\] Task (caddie\.\w+)\[[^\]]*\] succeeded in ([0-9.e-]+)s")


def task_runs(log: Path) -> list[tuple[float, str, float]]:
    """(when it ended, task name, seconds) for each task a worker ran, from its log (times in this machine's zone)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = TASK_LINE.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
            out.append((when, m.group(2), float(m.group(3))))
    return out


def hold_slots(api_url: str, token: str, iterations: int, limit_s: float) -> list[int]:
    """Both of the launcher's slots taken by stand-in runs of ``iterations`` 0.1 s steps (on `cpu`), once both
    are RUNNING; their ids. RuntimeError when they are not RUNNING within ``limit_s``."""
    held = []
    with httpx.Client(base_url=f"{api_url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for seed in range(1, CAPACITY + 1):
            r = c.post("/runs", json={"name": "hold", "track": "unlimited", "hardware": "cpu", "config": {"ITERATIONS": iterations}, "seed": seed})
            r.raise_for_status()
            held.append(int(r.json()["runs"][0]["id"]))
        end = time.monotonic() + limit_s
        while sum(c.get(f"/runs/{run}").json()["status"] == "RUNNING" for run in held) < CAPACITY:
            if time.monotonic() > end:
                raise RuntimeError("the two holding runs did not start")
            time.sleep(0.5)
    return held


# --- what the scenarios measure ---------------------------------------------------------------
@dataclass
class Outcome:
    name: str
    fault: str
    runs: int = 0
    lost: int = 0
    duplicate_launches: int = 0
    duplicate_runs: int = 0
    most_at_once: int = 0
    recovery_s: float | None = None
    wrong_answers: int | None = None  # runs that ended as expected but whose reason or result does not say what happened
    nodes_leaked: int | None = None  # cluster rows left UP with no active run, plus trainer processes alive after their run ended
    notes: list[str] = field(default_factory=list)


class Watch:
    """Samples the scenario's runs every 0.25 s and notes when any of them is stranded."""

    def __init__(self, engine, run_ids: Callable[[], list[int]]) -> None:  # noqa: ANN001
        self.engine = engine
        self.run_ids = run_ids
        self.stranded_at: list[tuple[float, list[int]]] = []
        self.holders: dict[int, str | None] = {}  # run -> its lease holder when the fault came (see fault())
        self.taken_over: dict[int, float] = {}  # run -> when another executor took it, or it ended
        self._free_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self._sample()
            except Exception:  # noqa: BLE001 (PostgreSQL restarting: no sample this time)
                continue

    def _sample(self) -> None:
        ids = self.run_ids()
        if not ids:
            return
        now = datetime.now(timezone.utc)
        stale = timedelta(seconds=DEFAULTS.heartbeat_s + 2)
        with self.engine.connect() as c:
            rows = c.execute(select(Run.id, Run.status, Run.heartbeat_at, Run.attempts, Run.worker_task_id).where(Run.id.in_(ids))).all()
            active = c.execute(select(func.count()).select_from(Run).where(Run.status.in_(ACTIVE))).scalar()
            latest = select(func.max(RunEvent.id)).where(RunEvent.run_id.in_(ids), RunEvent.to_status == "QUEUED",
                                                          RunEvent.from_status.in_(ACTIVE)).group_by(RunEvent.run_id)  # fmt: skip
            # A run requeued after its node died ("node lost") has no retry wait: queued, it is waiting for nothing.
            requeued = {run_id: at for run_id, at, reason in c.execute(select(RunEvent.run_id, RunEvent.at, RunEvent.reason).where(RunEvent.id.in_(latest)))
                        if not is_node_lost(reason)}  # fmt: skip
        stranded = [r.id for r in rows if r.status in ACTIVE and (r.heartbeat_at is None or now - r.heartbeat_at > stale)]
        waiting = [
            r.id for r in rows
            if r.status == "QUEUED" and not (r.attempts and r.id in requeued and now - requeued[r.id] < timedelta(seconds=DEFAULTS.retry_backoff_s * 2 ** (r.attempts - 1)))
        ]  # fmt: skip
        t = time.time()
        for r in rows:
            if r.id in self.holders and r.id not in self.taken_over:
                if r.status in TERMINAL or (r.worker_task_id != self.holders[r.id] and r.worker_task_id and not is_dispatch_mark(r.worker_task_id)):
                    self.taken_over[r.id] = t
        if waiting and active < CAPACITY:
            self._free_since = self._free_since or t
            if t - self._free_since > DEFAULTS.scheduler_tick_s + 1:
                stranded += waiting
        else:
            self._free_since = None
        if stranded:
            self.stranded_at.append((t, stranded))

    def fault(self) -> float:
        """Note the lease holders of the scenario's active runs; returns the time of the fault."""
        with self.engine.connect() as c:
            self.holders = dict(c.execute(select(Run.id, Run.worker_task_id).where(Run.id.in_(self.run_ids()), Run.status.in_(ACTIVE))).all())
        return time.time()

    def recovery_after(self, t_fault: float) -> float:
        """Last moment a run was stranded, or later: when the last run whose executor died was taken over."""
        after = [t for t, _ in self.stranded_at if t >= t_fault]
        orphaned = [self.taken_over.get(run, time.time()) for run, holder in self.holders.items() if holder_gone(holder)]
        return max([0.0, *(t - t_fault for t in after), *(t - t_fault for t in orphaned)])


class Suite:
    def __init__(self, home: Path, stack: Stack, db_url: str, tokens: dict[str, str]) -> None:
        self.home = home
        self.stack = stack
        self.engine = create_engine(db_url, pool_pre_ping=True)
        self.tokens = tokens
        self.clients = {team: httpx.Client(base_url=f"{stack.url}/api/v1", headers={"Authorization": f"Bearer {tok}"}, timeout=10) for team, tok in tokens.items()}
        self.ids: list[int] = []  # the current scenario's runs
        self.server_errors: list[str] = []  # 5xx answers to submits in the current scenario
        self.killed_at: dict[tuple[int, str], float] = {}  # (run, attempt folder) -> when the suite killed its trainer with its wrapper

    # --- helpers ----------------------------------------------------------------------
    def submit(self, steps: int, *, team: str = "a", key: str | None = None, seed: int = 1) -> int:
        """POST /runs, retried (with the same Idempotency-Key, if any) while the API is down or answers 5xx."""
        body = {"name": f"fault-{steps}", "track": "unlimited", "hardware": "cpu", "config": {"ITERATIONS": steps}, "seed": seed}
        headers = {"Idempotency-Key": key} if key else {}
        end = time.monotonic() + 120
        while True:
            try:
                r = self.clients[team].post("/runs", json=body, headers=headers)
                if r.status_code < 500:
                    break
                self.server_errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                raise TimeoutError("a submit to be answered")
            time.sleep(0.2)
        r.raise_for_status()
        run_id = int(r.json()["runs"][0]["id"])
        if run_id not in self.ids:
            self.ids.append(run_id)
        return run_id

    def rows(self, ids: list[int]) -> list:  # noqa: ANN401
        with self.engine.connect() as c:
            return c.execute(select(Run).where(Run.id.in_(ids))).all()

    def wait(self, predicate: Callable[[], bool], limit: float, what: str) -> float:
        t0 = time.monotonic()
        while True:
            try:
                if predicate():
                    return time.monotonic() - t0
            except Exception:  # noqa: BLE001 (the database may be restarting)
                pass
            if time.monotonic() - t0 > limit:
                raise TimeoutError(what)
            time.sleep(0.1)

    def status(self, run_id: int) -> str:
        return self.rows([run_id])[0].status

    def event_at(self, run_id: int, to_status: str) -> float:
        with self.engine.connect() as c:
            at = c.execute(select(func.min(RunEvent.at)).where(RunEvent.run_id == run_id, RunEvent.to_status == to_status)).scalar()
        return at.timestamp() if at else float("nan")

    def trainer_started(self, run_id: int) -> dict:
        for e in self.events():
            if e["run"] == run_id and e["kind"] == "start":
                return e
        return {}

    def events(self) -> list[dict]:
        out = []
        for path in sorted((self.home / "runs").glob(f"*/attempt-*/{MARKS}")):
            try:
                out += [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
            except (OSError, json.JSONDecodeError):
                continue  # being written
        return sorted(out, key=lambda e: e["t"])

    def all_done(self, limit: float = 300) -> None:
        try:
            self.wait(lambda: all(r.status in TERMINAL for r in self.rows(self.ids)), limit, "every run to end")
        except TimeoutError:
            pass

    def most_at_once(self) -> int:
        """Most stand-in trainers alive at once (start..end marks; a killed one ends at its attempt's exit file, or now)."""
        spans: dict[tuple[int, str], list[float]] = {}
        for e in self.events():
            if e["run"] not in self.ids:
                continue  # another scenario's
            span = spans.setdefault((e["run"], e["attempt"]), [e["t"], float("nan")])
            if e["kind"] == "end":
                span[1] = e["t"]
        points = []
        for (run, attempt), (start, end) in spans.items():
            if end != end:  # no end mark: killed
                exit_file = self.home / "runs" / str(run) / attempt / "exit_code.json"
                end = exit_file.stat().st_mtime if exit_file.exists() else self.killed_at.get((run, attempt), time.time())
            points += [(start, 1), (end, -1)]
        most = now = 0
        for _, d in sorted(points, key=lambda p: (p[0], p[1])):
            now += d
            most = max(most, now)
        return most

    def outcome(self, name: str, fault: str, recovery: float | None, *, expect: str | dict[int, str] = "SUCCEEDED") -> Outcome:
        rows = self.rows(self.ids)
        out = Outcome(name, fault, runs=len(rows), recovery_s=recovery, most_at_once=self.most_at_once())

        def expected(run_id: int) -> str:
            return expect if isinstance(expect, str) else expect.get(run_id, "SUCCEEDED")

        out.lost = sum(1 for r in rows if r.status != expected(r.id))
        for r in rows:
            launches = len(list((self.home / "runs" / str(r.id)).glob("attempt-*")))
            out.duplicate_launches += max(0, launches - (r.attempts + 1))
            if r.status != expected(r.id):
                out.notes.append(f"run {r.id} {r.status}: {r.status_reason}")
        with self.engine.connect() as c:
            dup = c.execute(text("SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM runs WHERE idempotency_key IS NOT NULL "
                                 "GROUP BY user_id, idempotency_key, seed) k")).scalar()  # fmt: skip
        out.duplicate_runs = int(dup)
        return out

    def scenario(self, fn: Callable[[], Outcome]) -> Outcome:
        self.ids, self.server_errors = [], []
        with Watch(self.engine, lambda: list(self.ids)) as self.watch:
            out = fn()
        if self.server_errors:
            out.notes.append(f"the API answered {len(self.server_errors)} submit(s) with a 5xx (retried): {self.server_errors[0]}")
        return out

    # --- the scenarios ------------------------------------------------------------------
    def kill_runs_worker(self) -> Outcome:
        ids = [self.submit(150, seed=s) for s in (1, 2)]
        self.wait(lambda: all(self.trainer_started(i) for i in ids), 60, "trainers to start")
        t = self.watch.fault()
        self.stack.kill("runs worker")
        self.all_done()
        return self.outcome("runs worker", "kill -9 of the runs worker with 2 runs training", self.watch.recovery_after(t))

    def kill_control_worker(self) -> Outcome:
        t = self.watch.fault()
        self.stack.kill("control worker")
        run = self.submit(10)  # its dispatch needs the scheduler, which runs on the control worker
        self.all_done()
        out = self.outcome("control worker", "kill -9 of the control worker (scheduler, janitor), then a submit", self.watch.recovery_after(t))
        out.notes.append(f"the run submitted while it was down was dispatched {self.event_at(run, 'PROVISIONING') - t:.1f} s after the kill")
        return out

    def kill_beat(self) -> Outcome:
        run = self.submit(150)
        self.wait(lambda: bool(self.trainer_started(run)), 60, "the trainer to start")
        t = self.watch.fault()
        self.stack.kill("beat")
        self.stack.kill("runs worker")  # the run's recovery needs the janitor's tick, which beat sends
        self.all_done()
        out = self.outcome("beat", "kill -9 of beat and of the runs worker with a run training", self.watch.recovery_after(t))
        with self.engine.connect() as c:
            again = c.execute(select(func.min(RunEvent.at)).where(RunEvent.run_id == run, RunEvent.actor == "janitor")).scalar()
        if again:
            out.notes.append(f"the janitor dispatched the run again {again.timestamp() - t:.1f} s after the kills")
        return out

    def kill_api(self) -> Outcome:
        keys = [f"fault-idem-{i}" for i in range(50)]
        done: list[int] = []

        def client() -> None:
            for i, key in enumerate(keys):
                done.append(self.submit(2, key=key, seed=1))

        th = threading.Thread(target=client)
        th.start()
        self.wait(lambda: len(done) >= 20, 60, "20 submits")
        t0 = time.monotonic()
        self.stack.kill("api")
        time.sleep(0.2)
        self.stack.wait_api(60)
        back = time.monotonic() - t0
        th.join(120)
        self.all_done(400)
        out = self.outcome("API", "kill -9 of the API during 50 idempotent submits (the client retries each with its key)", back)
        out.notes.append(f"{len(set(done))} distinct runs for 50 keys; the API answers again {back:.1f} s after the kill "
                         f"({RESTART_DELAY_S:.0f} s restart delay + uvicorn's start on this machine)")  # fmt: skip
        return out

    def kill_wrapper(self) -> Outcome:
        run = self.submit(60)
        self.wait(lambda: bool(self.trainer_started(run)) and self.rows([run])[0].launch_handle, 60, "the trainer to start")
        handle = self.rows([run])[0].launch_handle
        t = self.watch.fault()
        os.kill(handle["data"]["pid"], signal.SIGKILL)
        self.all_done()
        out = self.outcome("wrapper", "kill -9 of a job's wrapper (the trainer carries on and finishes)", self.watch.recovery_after(t))
        end = [e["t"] for e in self.events() if e["run"] == run and e["kind"] == "end"]
        finished = self.rows([run])[0].finished_at
        if end and finished:
            out.notes.append(f"trainer end -> SUCCEEDED {finished.timestamp() - end[-1]:.1f} s; trained once")
        return out

    def kill_trainer(self) -> Outcome:
        run = self.submit(60)
        self.wait(lambda: bool(self.trainer_started(run)), 60, "the trainer to start")
        child = json.loads(next((self.home / "runs" / str(run)).glob("attempt-*/child.json")).read_text())
        t = self.watch.fault()
        os.killpg(child["pgid"], signal.SIGKILL)
        self.all_done(400)
        # A trainer killed by SIGKILL under a live wrapper is a failed run (the OOM killer does this;
        # a rerun would die the same way), ended at once with the reason: that is the expected outcome.
        out = self.outcome("trainer", "kill -9 of a trainer's process group (expected: FAILED, saying so)", self.watch.recovery_after(t), expect="FAILED")
        starts = sorted(e["t"] for e in self.events() if e["run"] == run and e["kind"] == "start")
        row = self.rows([run])[0]
        note = f"run {run} {row.status} after {row.attempts + 1} attempt(s): {row.status_reason}"
        if len(starts) > 1:
            note += f"; launched again {starts[-1] - t:.1f} s after the kill (requeued, then its retry backoff of {DEFAULTS.retry_backoff_s:.0f} s)"
        out.notes.append(note)
        return out

    def node_lost(self) -> Outcome:
        """A node dying under its job (preemption, hardware): the job's wrapper and its trainer killed at once,
        so nothing records an exit. Expected: the run requeued as 'node lost', relaunched at once (no retry
        wait) from step 0 and SUCCEEDED on its second attempt, both attempts billed."""
        run = self.submit(60)
        self.wait(lambda: bool(self.trainer_started(run)) and self.rows([run])[0].launch_handle, 60, "the trainer to start")
        handle = self.rows([run])[0].launch_handle
        child = json.loads(next((self.home / "runs" / str(run)).glob("attempt-*/child.json")).read_text())
        t = self.watch.fault()
        os.kill(handle["data"]["pid"], signal.SIGKILL)  # the wrapper first: it must not record the trainer's death
        os.killpg(child["pgid"], signal.SIGKILL)
        self.killed_at[(run, Path(handle["data"]["workdir"]).name)] = time.time()  # no exit file will say when it died
        self.all_done()
        out = self.outcome("node lost", "kill -9 of a job's wrapper and trainer at once (its node dying: preemption, hardware)", self.watch.recovery_after(t))
        row = self.rows([run])[0]
        with self.engine.connect() as c:
            events = c.execute(select(RunEvent.at, RunEvent.from_status, RunEvent.to_status, RunEvent.reason).where(RunEvent.run_id == run).order_by(RunEvent.id)).all()
        requeue = next((e for e in events if e.to_status == "QUEUED" and e.from_status in ACTIVE), None)  # not its submission
        attempts = billed_attempts([Transition(e.at, e.to_status) for e in events])
        starts = sorted(e["t"] for e in self.events() if e["run"] == run and e["kind"] == "start")
        wrong = []
        if requeue is None or not is_node_lost(requeue.reason):
            wrong.append(f"run {run}: not requeued as a lost node ({requeue.reason if requeue else 'no requeue'})")
        if row.status == "SUCCEEDED" and (row.attempts != 1 or len(attempts) != 2):
            wrong.append(f"run {run}: {row.attempts + 1} attempt(s) recorded, {len(attempts)} billed (expected 2 and 2)")
        out.notes.append(f"run {run} {row.status} after {row.attempts + 1} attempt(s), {len(attempts)} billed; "
                         f"relaunched (trainer started again) {starts[-1] - t:.1f} s after the kill; requeue reason: {requeue.reason if requeue else '-'}")  # fmt: skip
        return self.finish(out, wrong)

    def restart_broker(self, redis: Redis, down_s: float) -> Outcome:
        ids = [self.submit(80, seed=s) for s in (1, 2, 3, 4)]
        self.wait(lambda: sum(1 for i in ids if self.trainer_started(i)) >= 2, 60, "2 trainers to start")
        t = self.watch.fault()
        redis.kill9()
        time.sleep(down_s)
        redis.start()
        back = time.time()
        self.all_done(400)
        out = self.outcome(f"broker {down_s:.0f} s", f"kill -9 of Redis, down {down_s:.0f} s (no persistence: queued messages lost), with 2 runs training, 2 queued",
                           self.watch.recovery_after(t))  # fmt: skip
        # The measure: how long a slot stood free with a run queued after the broker came back.
        starts = sorted(self.trainer_started(i)["t"] for i in ids[2:] if self.trainer_started(i))
        ends = sorted(e["t"] for e in self.events() if e["kind"] == "end" and e["run"] in ids[:2])
        if len(starts) == 2 and len(ends) >= 2:
            idle = max(s0 - max(back, e0) for s0, e0 in zip(starts, ends))
            out.notes.append(f"queued runs started {', '.join(f'{s0 - back:+.1f}' for s0 in starts)} s from the broker's return; "
                             f"longest a slot stood free after the return with a run queued: {max(idle, 0.0):.1f} s")  # fmt: skip
        return out

    def restart_postgres(self, pg: Postgres) -> Outcome:
        ids = [self.submit(100, seed=s) for s in (1, 2)]
        self.wait(lambda: all(self.trainer_started(i) for i in ids), 60, "trainers to start")
        t = self.watch.fault()
        pg.crash()
        time.sleep(3)
        pg.start()
        self.all_done(400)
        return self.outcome("PostgreSQL", "immediate stop and restart of PostgreSQL (3 s down) with 2 runs training", self.watch.recovery_after(t))

    def postgres_down_60s(self, pg: Postgres) -> Outcome:
        """PostgreSQL stopped for 60 s with 2 runs training while a client keeps calling the API:
        every answer should be a 200 or a 503 with Retry-After (no 500, no dropped connection)."""
        ids = [self.submit(900, seed=s) for s in (1, 2)]
        self.wait(lambda: all(self.trainer_started(i) for i in ids), 60, "trainers to start")
        answers: dict[str, int] = {}
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=f"{self.stack.url}/api/v1", headers={"Authorization": f"Bearer {self.tokens['a']}"}, timeout=10) as c:
                while not stop.is_set():
                    try:
                        r = c.get("/runs", params={"limit": 5})
                        kind = f"{r.status_code}" + (" with Retry-After" if r.status_code == 503 and "Retry-After" in r.headers else "")
                    except httpx.HTTPError as exc:
                        kind = f"no answer ({type(exc).__name__})"
                    answers[kind] = answers.get(kind, 0) + 1
                    time.sleep(0.5)

        th = threading.Thread(target=client)
        th.start()
        t = self.watch.fault()
        pg.crash()
        time.sleep(60)
        pg.start()
        time.sleep(5)
        stop.set()
        th.join(30)
        self.all_done(400)
        out = self.outcome("PostgreSQL 60 s", "immediate stop of PostgreSQL, down 60 s, with 2 runs training and a client calling the API every 0.5 s",
                           self.watch.recovery_after(t))  # fmt: skip
        out.notes.append("API answers during and just after the outage: " + ", ".join(f"{k}: {n}" for k, n in sorted(answers.items())))
        return out

    def cancel_race(self) -> Outcome:
        """Cancels sent as a run's trainer has written its result and is exiting (0 to 0.2 s after result.json appears):
        the run should end SUCCEEDED with its result, and the cancel's answer (cancel_outcome, waiting up to 5 s)
        should say what really happened."""
        answers = []
        for seed, delay in enumerate((0.0, 0.05, 0.1, 0.2, 0.0, 0.05, 0.1, 0.2), start=1):
            run = self.submit(20, seed=seed)
            # The result file in the run's folder (a sealed job's end mark may not reach the suite's home).
            self.wait(lambda: any((self.home / "runs" / str(run)).glob("attempt-*/result.json")), 120, "the trainer to write its result")
            time.sleep(delay)
            r = self.clients["a"].post(f"/runs/{run}/cancel", params={"wait_s": 5})
            said = r.json().get("cancel_outcome", "-") if r.status_code == 200 else f"{r.status_code}"
            answers.append((run, delay, said))
        self.all_done()
        out = self.outcome("cancel race", "cancel 0-0.2 s after the trainer wrote its result (8 runs)", None)
        final = {r.id: r for r in self.rows(self.ids)}
        agree = {"finished_first": ("SUCCEEDED", "FAILED"), "cancelled": ("CANCELLED",), "409": ("SUCCEEDED", "FAILED", "CANCELLED")}
        wrong = [(run, said, final[run].status) for run, _, said in answers if final[run].status not in agree.get(said, ())]
        no_result = [r.id for r in final.values() if r.status == "SUCCEEDED" and r.val_bpb is None]
        out.notes.append("answers (run, delay s, cancel_outcome or HTTP status -> final status): "
                         + "; ".join(f"{run} {delay:g} {said} -> {final[run].status}" for run, delay, said in answers))  # fmt: skip
        out.notes.append(f"answers that did not say what happened: {len(wrong)}" + (f" {wrong}" if wrong else "")
                         + f"; SUCCEEDED without val_bpb: {len(no_result)}")  # fmt: skip
        out.lost += len(no_result)
        return out

    # --- issue 21: the launch gap, a hung trainer, a full disk -----------------------------------
    def nodes_leaked(self) -> tuple[int, list[str]]:
        """Cluster rows left UP (or owned) with no active run on them, plus trainer processes of the
        scenario's runs still alive after every run of it ended (on the local launcher the node is
        this machine: a leaked node is a trainer nobody follows)."""
        what = []
        with self.engine.connect() as c:
            rows = c.execute(text("SELECT c.name, c.status, c.owner_run_id FROM clusters c WHERE (c.status = 'UP' OR c.owner_run_id IS NOT NULL) "
                                  "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.status IN ('PROVISIONING', 'RUNNING') "
                                  "AND (r.cluster_id = c.id OR r.id = c.owner_run_id))")).all()  # fmt: skip
        what += [f"cluster {r.name} {r.status} owned by {r.owner_run_id} with no active run" for r in rows]
        time.sleep(1.0)  # a stopped trainer's last second
        what += [f"process {pid} ({name}) still working in {cwd}" for pid, name, cwd in self.processes_in(self.ids)]
        return len(what), what

    def processes_in(self, ids: list[int]) -> list[tuple[int, str, str]]:
        """Live processes working in these runs' folders: the wrapper, the sandbox and the trainer all do (a sealed pid means nothing here)."""
        import psutil

        folders = tuple(str(self.home / "runs" / str(run)) + os.sep for run in ids)
        found = []
        for p in psutil.process_iter():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and (p.cwd() + os.sep).startswith(folders):
                    found.append((p.pid, p.name(), p.cwd()))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found

    def finish(self, out: Outcome, wrong: list[str]) -> Outcome:
        n, leaked = self.nodes_leaked()
        out.nodes_leaked = n
        out.notes += leaked
        out.wrong_answers = len(wrong)
        out.notes += wrong
        return out

    def launch_gap(self) -> Outcome:
        """The runs worker SIGKILLed between the launcher's submit (the trainer started) and the commit that
        records the job (bench/_fault_hooks.py), twice: a run of 300 steps (30 s: still training when a new
        executor comes) and one of 20 (2 s: ended before). Expected: each trainer started once, the job
        adopted by the next executor, SUCCEEDED with its result, no second trainer, the node released."""
        notes: list[str] = []
        wrong: list[str] = []
        recoveries: list[float] = []  # per fault: until the run it struck was driven again (or ended)
        for steps in (300, 20):
            marker = self.home / "kill-before-record"
            marker.touch()
            killed_at = self.stack.restarts["runs worker"]
            run = self.submit(steps, seed=len(self.ids) + 1)
            self.wait(lambda: not marker.exists(), 60, "the launch to reach the fault point")
            t = self.watch.fault()
            self.wait(lambda: self.stack.restarts["runs worker"] > killed_at, 30, "the runs worker to be restarted")
            self.wait(lambda: self.status(run) in TERMINAL, 300, "the run to end")
            recoveries.append(self.watch.recovery_after(t))
            row = self.rows([run])[0]
            starts = [e for e in self.events() if e["run"] == run and e["kind"] == "start"]
            with self.engine.connect() as c:
                reasons = [r for (r,) in c.execute(select(RunEvent.reason).where(RunEvent.run_id == run).order_by(RunEvent.id)).all()]
            adopted = next((r for r in reasons if r and r.startswith("adopted job")), None)
            running_at = self.event_at(run, "RUNNING")
            notes.append(f"run {run} ({steps} steps): trainer started {len(starts)} time(s), {len(list((self.home / 'runs' / str(run)).glob('attempt-*')))} "
                         f"attempt folder(s); {row.status} after {row.attempts + 1} attempt(s); recorded RUNNING {running_at - t:.1f} s after the kill"
                         + (f" ('{adopted[:90]}…')" if adopted else " (not by adoption)"))  # fmt: skip
            if row.status == "SUCCEEDED" and row.val_bpb is None:
                wrong.append(f"run {run} SUCCEEDED without its val_bpb")
            if adopted is None:
                wrong.append(f"run {run}: no event says its job was adopted")
            if len(starts) != 1:
                wrong.append(f"run {run}: {len(starts)} trainer starts for one attempt")
        self.all_done()
        out = self.outcome("launch gap", "kill -9 of the runs worker after the launcher started the trainer, before the launch was recorded (twice: a 30 s and a 2 s run)",
                           max(recoveries, default=None))  # fmt: skip
        out.notes += notes
        return self.finish(out, wrong)

    def launch_gap_cancel(self) -> Outcome:
        """The launch gap (as above) on a 300-step run, then its cancel while no executor drives it. Expected:
        CANCELLED, and the trainer its dead executor started stopped (not left training for nobody)."""
        marker = self.home / "kill-before-record"
        marker.touch()
        run = self.submit(300, seed=1)
        self.wait(lambda: not marker.exists(), 60, "the launch to reach the fault point")
        t = self.watch.fault()
        r = self.clients["a"].post(f"/runs/{run}/cancel")
        self.wait(lambda: self.status(run) in TERMINAL, 120, "the run to end")
        ended = self.rows([run])[0].finished_at
        out = self.outcome("launch gap + cancel", "kill -9 of the runs worker between launch and record (as above), then the run's cancel",
                           self.watch.recovery_after(t), expect="CANCELLED")  # fmt: skip
        row = self.rows([run])[0]
        still = self.processes_in([run])
        out.notes.append(f"cancel answered {r.status_code} {r.json().get('cancel_outcome', '') if r.status_code == 200 else ''}; run {run} {row.status} "
                         f"{(ended.timestamp() - t) if ended else float('nan'):.1f} s after the kill: {row.status_reason}; processes still in its folder "
                         f"at its end: {len(still)}")  # fmt: skip
        last = max((e["t"] for e in self.events() if e["run"] == run), default=float("nan"))
        if still:
            self.wait(lambda: not self.processes_in([run]), 600, "the orphan to end")
            out.notes.append(f"the orphan trainer ran on {time.time() - (ended.timestamp() if ended else t):.0f} s after the run ended CANCELLED "
                             f"(its last mark {last - t:.0f} s after the kill)")  # fmt: skip
        return self.finish(out, [] if not still else [f"run {run} CANCELLED while its trainer ran on"])

    def hang(self) -> Outcome:
        """A trainer that prints 3 steps, then sleeps for ever, beside a healthy run, at caddie's defaults: the
        local launcher's hang watch (CADDIE_IDLE_TIMEOUT_S) should stop it, end it FAILED saying so, and free its slot."""
        hung = self.submit(10, seed=HANG_SEED)
        healthy = self.submit(250, seed=1)
        self.wait(lambda: any(e["run"] == hung and e["kind"] == "hang" for e in self.events()), 60, "the trainer to hang")
        t = self.watch.fault()
        while_hung = self.processes_in([hung])  # what the leak count must see gone afterwards
        silent_from = next(e["t"] for e in self.events() if e["run"] == hung and e["kind"] == "hang")
        self.wait(lambda: self.status(hung) in TERMINAL, DEFAULTS.idle_timeout_s + 120, "the hung run to end")
        after = self.submit(10, seed=2)  # the freed slot takes a new run
        self.all_done()
        out = self.outcome("hang", f"a trainer goes silent and idle and never ends (defaults: CADDIE_IDLE_TIMEOUT_S={DEFAULTS.idle_timeout_s:g}), "
                           "beside a healthy run, then a new run",
                           None, expect={hung: "FAILED"})  # fmt: skip
        row = self.rows([hung])[0]
        ended = row.finished_at.timestamp() if row.finished_at else float("nan")
        said = row.status_reason or ""
        wrong = [] if said.startswith("hung: no output") and "CADDIE_IDLE_TIMEOUT_S" in said else [f"run {hung}: reason does not say it hung"]
        out.notes.append(f"hung run {hung} {row.status} after {row.attempts + 1} attempt(s), {ended - silent_from:.1f} s after its last output "
                         f"(limit {DEFAULTS.idle_timeout_s:g} s + the wrapper's 1 s sampling + the executor's poll): {row.status_reason}")  # fmt: skip
        out.notes.append(f"processes in the hung run's folder while it hung: {len(while_hung)} ({', '.join(sorted({n for _, n, _ in while_hung}))}); after: "
                         f"{len(self.processes_in([hung]))}")  # fmt: skip
        started_after = self.event_at(after, "PROVISIONING")
        out.notes.append(f"the next run was picked up {started_after - ended:+.1f} s from the hung run's end; the healthy run {healthy} {self.status(healthy)}")
        out.recovery_s = ended - t
        return self.finish(out, wrong)

    def disk_full(self) -> Outcome:
        """The run folder refuses writes: simulated by RLIMIT_FSIZE (64 KiB) on the trainer process (no loop
        device or tmpfs mount here); its model file hits EFBIG. Beside it a healthy run, then another.
        Expected: that run FAILED once (not retried), its reason naming the write that failed and the
        run folder; the others SUCCEEDED with their results."""
        full = self.submit(10, seed=FSIZE_SEED)
        healthy = self.submit(60, seed=1)
        self.wait(lambda: self.status(full) in TERMINAL, 120, "the run on the full disk to end")
        t = self.watch.fault()
        after = self.submit(10, seed=2)
        self.all_done()
        out = self.outcome("disk full", f"the trainer's files may not grow past {FSIZE_LIMIT // 1024} KiB (RLIMIT_FSIZE on the job process: "
                           "writes fail with EFBIG), beside a healthy run, then a new run", None, expect={full: "FAILED"})  # fmt: skip
        row = self.rows([full])[0]
        reason = row.status_reason or ""
        wrong = []
        if not (("File too large" in reason or "disk" in reason) and str(self.home / "runs" / str(full)) in reason):
            wrong.append(f"run {full}: reason names neither the failed write nor the run folder")
        if row.attempts:
            wrong.append(f"run {full}: retried {row.attempts} time(s) on the same disk")
        for r in self.rows([healthy, after]):
            if r.status == "SUCCEEDED" and r.val_bpb is None:
                wrong.append(f"run {r.id} SUCCEEDED without its val_bpb")
        out.notes.append(f"run {full} {row.status} after {row.attempts + 1} attempt(s): {reason}")
        out.notes.append(f"healthy run {healthy} {self.status(healthy)}, the run after it {after} {self.status(after)} ({time.time() - t:.0f} s later all ended)")
        return self.finish(out, wrong)

    def many_runs(self) -> Outcome:
        t0 = time.time()
        for i in range(100):
            for team in ("a", "b"):
                self.submit(1, team=team, seed=i)
        self.all_done(1200)
        out = self.outcome("2 teams x 100", "2 teams submit 100 runs each, 2 slots", None)
        with self.engine.connect() as c:
            order = [row[0] for row in c.execute(select(Run.team_id).where(Run.id.in_(self.ids)).order_by(Run.started_at)).all()]
            first, last = c.execute(select(func.min(Run.started_at), func.max(Run.finished_at)).where(Run.id.in_(self.ids))).one()
        half = order[: len(order) // 2]
        out.notes.append(f"makespan {(last - first).total_seconds():.0f} s from the first start ({time.time() - t0:.0f} s with submits); "
                         f"first half of the starts: {half.count(half[0])} of one team, {len(half) - half.count(half[0])} of the other")  # fmt: skip
        return out


def stack_env(home: Path, db_url: str, broker_url: str) -> dict[str, str]:
    """The stack's environment: this one less any CADDIE_ setting, then the deployment under test (the README's
    submit hook, the local launcher with CAPACITY slots, the stand-in trainer in ``home``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADDIE_")}
    env.update(
        PYTHONPATH=str(REPO), CADDIE_HOME=str(home), CADDIE_DATABASE_URL=db_url, CADDIE_BROKER_URL=broker_url,
        CADDIE_ON_SUBMIT_HOOK="worker.notify:runs_submitted", CADDIE_LAUNCHER="local", CADDIE_GPU_COUNT="0",
        CADDIE_MAX_CONCURRENT_RUNS=str(CAPACITY), CADDIE_TRAINER_COMMAND=json.dumps([sys.executable, str(home / "stand_in.py")]),
    )  # fmt: skip
    if shutil.which("bwrap") is None:
        env["CADDIE_SANDBOX"] = "none"  # no bubblewrap on this machine: jobs unsealed (the report says so)
    return env


def bootstrap(db_url: str) -> dict[str, str]:
    from service.core.db import get_sessionmaker
    from service.core.migrate import upgrade
    from service.teams import accounts

    upgrade(db_url)
    with get_sessionmaker(db_url)() as session:
        a = accounts.create_admin(session, "fault-a", "fault-a", "bench")
        accounts.create_team(session, "fault-b")
        user = accounts.create_user(session, "fault-b")
        accounts.add_member(session, "fault-b", user)
        _, b = accounts.create_token(session, user, "bench")
        session.commit()
    return {"a": a, "b": b}


def write_report(path: Path, outcomes: list[Outcome], started: datetime, elapsed: float) -> None:
    def rec(o: Outcome) -> str:
        return "–" if o.recovery_s is None else f"{o.recovery_s:.1f}"

    lines = [
        "# Fault suite",
        "",
        f"`python bench/faults.py` on {platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}), "
        f"{started.astimezone():%Y-%m-%d %H:%M %Z}, {elapsed / 60:.0f} min. PostgreSQL and Redis of the suite's own, the API under uvicorn, "
        f"a `runs` worker, a `control` worker and beat, the local launcher and a stand-in trainer (0.1 s a step); caddie's default "
        f"settings (heartbeat {DEFAULTS.heartbeat_s:.0f} s, stale after {DEFAULTS.stale_heartbeats:.0f} heartbeats, janitor tick "
        f"{DEFAULTS.janitor_tick_s:.0f} s, scheduler tick {DEFAULTS.scheduler_tick_s:.0f} s, retry backoff {DEFAULTS.retry_backoff_s:.0f} s) "
        f"but {CAPACITY} runs at once (silence watchdog {DEFAULTS.silence_timeout_s:.0f} s, hang watch {DEFAULTS.idle_timeout_s:g} s: "
        f"the defaults); a killed process is restarted {RESTART_DELAY_S:.0f} s after it died"
        + ("; no bubblewrap on this machine, so jobs ran unsealed (CADDIE_SANDBOX=none)." if shutil.which("bwrap") is None else "; jobs sealed in bubblewrap."),
        "",
        "Recovery: from the fault until no run of the scenario is stranded (active with no live heartbeat, or queued outside "
        "its retry backoff while a slot is free) and every run whose executor died with the fault has been taken over by a new "
        "one; for the API, until it answers again.",
        "",
        "| fault | runs | lost | answers wrong | nodes leaked | duplicate launches | duplicate runs | most of its trainers at once (capacity 2) | recovery, s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def opt(n: int | None) -> str:
        return "–" if n is None else str(n)

    for o in outcomes:
        lines.append(f"| {o.fault} | {o.runs} | {o.lost} | {opt(o.wrong_answers)} | {opt(o.nodes_leaked)} | {o.duplicate_launches} | {o.duplicate_runs} "
                     f"| {o.most_at_once} | {rec(o)} |")  # fmt: skip
    notes = [f"- {o.name}: {n}" for o in outcomes for n in o.notes]
    if notes:
        lines += ["", "Notes:", "", *notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


SCENARIOS = ("runs-worker", "control-worker", "beat", "api", "wrapper", "trainer", "broker", "broker-60s", "postgres", "postgres-60s", "many",
             "cancel-race", "launch-gap", "launch-gap-cancel", "hang", "disk-full", "node-lost")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "faults.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, run folders)")
    args = ap.parse_args()

    started, t0 = datetime.now(timezone.utc), time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="caddie-faults-"))
    os.chmod(root, 0o755)
    home = root / "home"
    home.mkdir()
    (home / "stand_in.py").write_text(STAND_IN)
    pg, redis = Postgres(root), Redis(root)
    stack = None
    outcomes: list[Outcome] = []
    try:
        pg.init()
        redis.start()
        tokens = bootstrap(pg.url())
        stack = Stack(home, stack_env(home, pg.url(), redis.url))
        stack.start()
        suite = Suite(home, stack, pg.url(), tokens)
        plan: dict[str, Callable[[], Outcome]] = {
            "runs-worker": suite.kill_runs_worker, "control-worker": suite.kill_control_worker, "beat": suite.kill_beat,
            "api": suite.kill_api, "wrapper": suite.kill_wrapper, "trainer": suite.kill_trainer,
            "broker": lambda: suite.restart_broker(redis, 3.0), "broker-60s": lambda: suite.restart_broker(redis, 60.0), "postgres": lambda: suite.restart_postgres(pg), "postgres-60s": lambda: suite.postgres_down_60s(pg), "many": suite.many_runs,
            "cancel-race": suite.cancel_race, "launch-gap": suite.launch_gap, "launch-gap-cancel": suite.launch_gap_cancel, "hang": suite.hang, "disk-full": suite.disk_full, "node-lost": suite.node_lost,
        }  # fmt: skip
        for name in args.only:
            print(f"--- {name}", flush=True)
            try:
                o = suite.scenario(plan[name])
            except TimeoutError as exc:
                o = suite.outcome(name, name, None)
                o.notes.append(f"gave up waiting for {exc}")
            outcomes.append(o)
            print(f"{o.fault}: runs {o.runs}, lost {o.lost}, duplicate launches {o.duplicate_launches}, duplicate runs {o.duplicate_runs}, "
                  f"most at once {o.most_at_once}, recovery {o.recovery_s}; {'; '.join(o.notes)}", flush=True)  # fmt: skip
        restarts = ", ".join(f"{n} {k}" for n, k in stack.restarts.items() if k)
        if outcomes and restarts:
            outcomes[-1].notes.append(f"process restarts over the whole suite: {restarts}")
    finally:
        if stack is not None:
            stack.stop()
        redis.kill9()
        pg.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    write_report(args.out, outcomes, started, time.monotonic() - t0)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
