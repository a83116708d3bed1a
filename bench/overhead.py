"""caddie's own overhead around a run, with the local launcher (not a test).

    python bench/overhead.py [--runs 20] [--mode redis|embedded]

Starts the API (uvicorn), a `runs` worker, a `control` worker and beat as
separate processes, then submits runs one after another over REST. The trainer
is a stand-in that records when it starts and when it is about to exit, so the
numbers are caddie's alone:

* submit -> trainer start: from just before POST /runs to the stand-in's first line;
* trainer exit -> SUCCEEDED: from the stand-in's last moment to the run's finished_at.

Modes: `redis` = PostgreSQL + Redis (production shape; a fresh database on
CADDIE_BENCH_PG, dropped afterwards; a redis-server of its own unless CADDIE_BENCH_REDIS
names one, which is never flushed); `embedded` = SQLite + the SQL broker (`caddie up`).
Writes bench/results/overhead.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from tests.redis_server import PrivateRedis  # noqa: E402

PG_ADMIN = os.environ.get("CADDIE_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Empty: a redis-server of the bench's own on a free port. A Redis named here is used as it is,
# never flushed (it may be shared): give it a database nothing else uses.
REDIS = os.environ.get("CADDIE_BENCH_REDIS", "")

STAND_IN = r'''
import json, os, sys, time
t0 = time.time()
out = os.environ["OUTPUT_DIR"]
print("step:1/1 train_loss:1.0000 train_time:1ms step_avg:1.00ms", flush=True)
with open(os.path.join(out, "result.json"), "w") as fh:
    json.dump({"status": "succeeded", "val_bpb": 1.0, "val_loss": 1.0, "total_bytes": 1, "steps": 1}, fh)
with open(os.path.join(out, "stand_in_times.json"), "w") as fh:
    json.dump({"start": t0, "exit": time.time()}, fh)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bootstrap(db_url: str) -> str:
    from service.core.db import get_sessionmaker
    from service.core.migrate import upgrade
    from service.teams.accounts import create_admin

    upgrade(db_url)
    with get_sessionmaker(db_url)() as session:
        token = create_admin(session, "bench", "bench", "bench")
        session.commit()
    return token


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--mode", choices=("redis", "embedded"), default="redis")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "overhead.md")
    ap.add_argument("--append", action="store_true", help="add this mode's section to --out instead of replacing it")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="caddie-bench-"))
    (home / "stand_in.py").write_text(STAND_IN)
    pg_db = None
    own_redis = None
    if args.mode == "redis":
        from sqlalchemy import create_engine, text

        pg_db = f"caddie_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{pg_db}"'))
        db_url, broker = PG_ADMIN.rsplit("/", 1)[0] + f"/{pg_db}", REDIS
        if not REDIS:
            own_redis = PrivateRedis()
            own_redis.start()
            broker = f"{own_redis.url}/0"
    else:
        db_url, broker = f"sqlite:///{home / 'caddie.db'}", f"sqla+sqlite:///{home / 'broker.sqlite'}"

    env = {k: v for k, v in os.environ.items() if not k.startswith("CADDIE_")}
    env.update(
        PYTHONPATH=str(REPO), CADDIE_HOME=str(home), CADDIE_DATABASE_URL=db_url, CADDIE_BROKER_URL=broker,
        CADDIE_ON_SUBMIT_HOOK="worker.notify:runs_submitted", CADDIE_LAUNCHER="local", CADDIE_GPU_COUNT="0",
        CADDIE_TRAINER_COMMAND=json.dumps([sys.executable, str(home / "stand_in.py")]),
    )  # fmt: skip
    token = bootstrap(db_url)
    port = free_port()
    celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app"]
    quiet = ["--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    procs = [
        start([sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--port", str(port), "--log-level", "warning"], env, home / "api.log"),
        start([*celery, "worker", "-Q", "runs", "-P", "threads", "-c", "1", "-n", "runs@%h", *quiet], env, home / "runs.log"),
        start([*celery, "worker", "-Q", "control", "-P", "solo", "-n", "control@%h", *quiet], env, home / "control.log"),
        start([*celery, "beat", "--loglevel", "WARNING"], env, home / "beat.log"),
    ]
    rows: list[tuple[float, ...]] = []
    try:
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                raise SystemExit("the API did not come up")
            time.sleep(0.1)
        time.sleep(3)  # let the workers connect before the clock starts
        for i in range(args.runs):
            t_submit = time.time()
            r = client.post("/runs", json={"name": f"bench-{i}", "track": "unlimited", "hardware": "cpu", "config": {}, "seed": i})
            r.raise_for_status()
            run_id = r.json()["runs"][0]["id"]
            deadline = time.monotonic() + 60
            while True:
                run = client.get(f"/runs/{run_id}").json()
                if run["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"run {run_id} stuck in {run['status']}")
                time.sleep(0.05)
            if run["status"] != "SUCCEEDED":
                raise SystemExit(f"run {run_id} {run['status']}: {run['status_reason']}")
            [times_file] = (home / "runs" / str(run_id)).glob("attempt-*/stand_in_times.json")
            times = json.loads(times_file.read_text())
            finished = ts(run["finished_at"])
            at = {e["to_status"]: ts(e["at"]) for e in client.get(f"/runs/{run_id}/events").json()}
            rows.append((run_id, times["start"] - t_submit, finished - times["exit"],
                         at["PROVISIONING"] - t_submit, at["RUNNING"] - at["PROVISIONING"], times["start"] - at["RUNNING"]))  # fmt: skip
            print(f"run {run_id}: submit->start {rows[-1][1]:.3f} s, exit->SUCCEEDED {rows[-1][2]:.3f} s", flush=True)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if own_redis is not None:
            own_redis.stop()
        if pg_db:
            from sqlalchemy import create_engine, text

            with create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'))

    write_report(args, rows)
    return 0


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def summary(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10)
    return f"{statistics.median(values):.3f} | {q[-1]:.3f} | {min(values):.3f} | {max(values):.3f}"


def write_report(args: argparse.Namespace, rows: list[tuple[float, ...]]) -> None:
    start = [r[1] for r in rows]
    done = [r[2] for r in rows]
    broker = "PostgreSQL + Redis" if args.mode == "redis" else "SQLite + SQL broker (caddie up)"
    section = [
        f"## {args.mode}: {broker}",
        "",
        f"`python bench/overhead.py --runs {args.runs} --mode {args.mode}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}), {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        "| seconds, over {} runs | median | p90 | min | max |".format(len(rows)),
        "|---|---|---|---|---|",
        f"| submit → trainer start | {summary(start)} |",
        f"| trainer exit → SUCCEEDED | {summary(done)} |",
        f"| &nbsp;&nbsp;submit → dispatched (PROVISIONING) | {summary([r[3] for r in rows])} |",
        f"| &nbsp;&nbsp;dispatched → job submitted (RUNNING) | {summary([r[4] for r in rows])} |",
        f"| &nbsp;&nbsp;RUNNING → trainer's first instruction | {summary([r[5] for r in rows])} |",
        "",
    ]
    header = [
        "# caddie overhead around a run (local launcher)",
        "",
        "Stand-in trainer (records its start and exit), runs one after another; API, a `runs`",
        "worker (threads), a `control` worker (solo) and beat as separate processes.",
        "Goal: both medians under 1 s.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.exists():
        args.out.write_text(args.out.read_text().rstrip("\n") + "\n\n" + "\n".join(section))
    else:
        args.out.write_text("\n".join(header + section))
    print("\n".join(section))


if __name__ == "__main__":
    sys.exit(main())
