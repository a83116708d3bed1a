"""One team's volume must not slow another team's pages (issue 17 item 5): team B's pages, idle and
with team A's 10,000 queued runs and a published 10,000-run group present.

    .venv/bin/python bench/team_isolation.py [--runs 10000] [--requests 40] [--out bench/results/team_isolation.md]

1. A PostgreSQL database of its own on 127.0.0.1:5432 (caddie_bench_iso: created here, migrated,
   dropped at the end), two teams. Team B: 12 runs in three groups (4 SUCCEEDED and published, with
   events, metric points and an archived log; 4 RUNNING with log chunks; 4 QUEUED).
2. The API as deployed: uvicorn in a subprocess (one worker process), no access log. The bench stands
   in for the control worker: it stores the queue forecast (beat's caddie.forecast_tick) between two
   pages' timed loops whenever it is older than CADDIE_QUEUE_FORECAST_INTERVAL_S, so the API reads a
   fresh stored one, as deployed, and the tick's CPU is not inside a timed request.
3. Idle: each of B's pages ``--requests`` times, one at a time (after 3 warm-up requests): p50 and p95.
4. Team A, through the domain functions (submit_runs, transition, judge_run, set_published) and bulk
   inserts where a worker would write rows: ``--runs`` QUEUED runs (25 configs, 16 seeds a submission)
   and a group of ``--runs`` SUCCEEDED runs, published, each with its 4 events, 20 metric points and,
   for one run in ten, 5 log chunks.
5. The same pages again; the table says where a page is over 2x its idle figure.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert, select, text, update

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.api_load import free_port, wait_until_healthy  # noqa: E402
from service.core.db import get_engine, get_sessionmaker  # noqa: E402
from service.core.migrate import upgrade  # noqa: E402
from service.core.models import LogChunk, Metric, Run, utcnow  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.core.status import RunStatus  # noqa: E402
from service.core.storage import make_artifact_store  # noqa: E402
from service.results import queries as results  # noqa: E402
from service.results.queries import judge_run  # noqa: E402
from service.runs.lifecycle import transition  # noqa: E402
from service.runs.logs import append_log, record_archive, write_archive  # noqa: E402
from service.runs.schemas import RunCreate  # noqa: E402
from service.runs.submit import submit_runs  # noqa: E402
from service.teams import accounts  # noqa: E402
from service.teams.tokens import authenticate  # noqa: E402
from worker.control.forecast import refresh_forecast  # noqa: E402

ADMIN_URL = os.environ.get("CADDIE_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DB_NAME = "caddie_bench_iso"
SEEDS = 16  # CADDIE_MAX_SEEDS: one submission makes at most this many runs
PROVIDED = "H100:8"  # the deployment stands for one with 8x H100 nodes (the runs never launch here)


def create_database() -> str:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{DB_NAME}"
    upgrade(url)
    return url


def drop_database(url: str) -> None:
    get_engine(url).dispose()
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
    admin.dispose()


# --- data -----------------------------------------------------------------------------------------
def submit(session, principal, settings: Settings, name: str, config: dict, seeds: list[int], track: str = "10min_16mb") -> list[int]:  # noqa: ANN001
    spec = RunCreate(name=name, track=track, hardware="H100:8", config=config, seeds=seeds)
    _, runs, _ = submit_runs(session, principal, spec, settings)
    return [r.id for r in runs]


def finish_runs(session, run_ids: list[int], rng: random.Random, *, status: RunStatus = RunStatus.SUCCEEDED) -> None:  # noqa: ANN001
    """Move runs through the state machine as the executor does, with the figures it writes."""
    for i in range(0, len(run_ids), 500):
        for run in session.scalars(select(Run).where(Run.id.in_(run_ids[i : i + 500]))):
            transition(session, run, RunStatus.PROVISIONING, actor="scheduler")
            transition(session, run, RunStatus.RUNNING, actor="worker", reason="job 1 on bench")
            if status is RunStatus.RUNNING:
                continue
            bpb = 1.12 + rng.gauss(0, 0.002)
            run.val_bpb, run.val_loss, run.pre_ttt_bpb = bpb, bpb * 1.6886, bpb + 0.02
            run.artifact_bytes, run.model_bytes, run.code_bytes = 15_900_000, 15_840_000, 60_000
            run.train_seconds, run.eval_seconds, run.steps = 590.0, 420.0, 6900
            run.result = {"status": "succeeded", "total_bytes": 15_900_000, "code_bytes": 60_000, "model_bytes": 15_840_000,
                          "train_seconds": 590.0, "eval_seconds": 420.0, "trainer_revision": "bench", "val_tokens_scored": 10,
                          "val_tokens_total": 10, "ttt_protocol": "score_first", "train_shards": ["fineweb_train_000000.bin"],
                          "val_shards": ["fineweb_val_000000.bin"], "world_size": 8}  # fmt: skip
            judge_run(run)
            transition(session, run, status, actor="worker")
        session.commit()


def worker_rows(session, run_ids: list[int], *, points: int, chunked: Callable[[int], bool]) -> None:  # noqa: ANN001
    """Metric points and log chunks as a worker's log stream writes them (bulk: the rows, not the path, matter here)."""
    now = utcnow()
    for i in range(0, len(run_ids), 500):
        part = run_ids[i : i + 500]
        session.execute(insert(Metric), [
            {"run_id": r, "kind": "train" if k < points - 2 else "val", "step": (k + 1) * 300, "train_loss": 4.0 - k * 0.1,
             "val_loss": 1.9 if k >= points - 2 else None, "val_bpb": 1.12 if k >= points - 2 else None, "elapsed_ms": k * 25_000.0, "attempt": 1}
            for r in part for k in range(points)
        ])  # fmt: skip
        chunks = [r for r in part if chunked(r)]
        if chunks:
            line = "step:300/6900 train_loss:3.9000 train_time:25000ms step_avg:83.33ms\n" * 40
            session.execute(insert(LogChunk), [{"run_id": r, "offset": k * len(line), "data": line, "created_at": now, "attempt": 1}
                                               for r in chunks for k in range(5)])  # fmt: skip
            session.execute(update(Run).where(Run.id.in_(chunks)).values(log_bytes=5 * len(line)))
        session.commit()


def team_a(maker, settings: Settings, token: str, n: int, rng: random.Random) -> dict[str, float]:  # noqa: ANN001
    took: dict[str, float] = {}
    with maker() as s:
        principal = authenticate(s, token)
        t = time.monotonic()
        queued: list[int] = []
        k = 0
        while len(queued) < n:
            seeds = [1000 + len(queued) + j for j in range(min(SEEDS, n - len(queued)))]
            queued += submit(s, principal, settings, f"sweep-{k % 25}", {"MATRIX_LR": round(0.02 + (k % 25) * 0.001, 3)}, seeds)
            k += 1
        took["submit queued"] = time.monotonic() - t
        t = time.monotonic()
        group: list[int] = []
        while len(group) < n:
            seeds = [50_000 + len(group) + j for j in range(min(SEEDS, n - len(group)))]
            group += submit(s, principal, settings, "big-published", {"NUM_LAYERS": 10}, seeds)
        took["submit group"] = time.monotonic() - t
        t = time.monotonic()
        finish_runs(s, group, rng)
        worker_rows(s, group, points=20, chunked=lambda r: r % 10 == 0)
        took["finish group"] = time.monotonic() - t
        key = s.scalar(select(Run.group_key).where(Run.id == group[0]))
        assert key is not None
        results.set_published(s, principal, key, True)
        s.commit()
    return took


def team_b(maker, settings: Settings, token: str, rng: random.Random) -> dict[str, int]:  # noqa: ANN001
    store = make_artifact_store(settings)
    with maker() as s:
        principal = authenticate(s, token)
        done = submit(s, principal, settings, "b-baseline", {"NUM_LAYERS": 11}, [1, 2, 3, 4])
        running = submit(s, principal, settings, "b-trying", {"NUM_LAYERS": 11, "XSA_LAST_N": 3}, [1, 2, 3, 4])
        submit(s, principal, settings, "b-next", {"NUM_LAYERS": 11, "XSA_LAST_N": 2}, [1, 2, 3, 4])
        for run_id in done:
            for i in range(200):
                append_log(s, run_id, f"step:{i * 30}/6900 train_loss:{4 - i / 100:.4f} train_time:{i * 2500}ms step_avg:83.33ms\n")
        s.commit()
        finish_runs(s, done, rng)
        worker_rows(s, done, points=200, chunked=lambda _r: False)
        for run_id in done:
            archived = write_archive(s, store, run_id)
            assert archived is not None and record_archive(s, archived)
        s.commit()
        finish_runs(s, running, rng, status=RunStatus.RUNNING)
        worker_rows(s, running, points=50, chunked=lambda _r: True)
        key = s.scalar(select(Run.group_key).where(Run.id == done[0]))
        assert key is not None
        results.set_published(s, principal, key, True)
        s.commit()
    return {"run": done[0], "running": running[0]}


# --- the API ---------------------------------------------------------------------------------------
def start_api(url: str, home: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "CADDIE_DATABASE_URL": url, "CADDIE_HOME": str(home), "CADDIE_PROVIDED_HARDWARE": PROVIDED, "PYTHONPATH": str(REPO)}
    return wait_until_healthy(subprocess.Popen(cmd, cwd=REPO, env=env), port)


class Forecast:
    """The control worker's forecast tick (beat's caddie.forecast_tick), run by the bench between two
    pages' timed loops whenever the stored forecast is older than the tick's interval: the API reads a
    fresh stored forecast, as deployed, and the tick's CPU (1-2 s with 10,000 queued runs on this
    2-CPU machine; on its own host in a deployment) never lands inside a timed request."""

    def __init__(self, maker, settings: Settings) -> None:  # noqa: ANN001
        self.maker, self.settings = maker, settings
        self.at = 0.0
        self.took: list[float] = []

    def refresh(self) -> None:
        if time.monotonic() - self.at < self.settings.queue_forecast_interval_s:
            return
        t = time.monotonic()
        with self.maker() as s:
            refresh_forecast(s, self.settings)
        self.at = time.monotonic()
        self.took.append(self.at - t)


def pages(ids: dict[str, int]) -> dict[str, str]:
    return {
        "API GET /runs": "/api/v1/runs",
        "API GET /runs/{id}": f"/api/v1/runs/{ids['run']}",
        "API GET /queue": "/api/v1/queue",
        "API GET /groups": "/api/v1/groups",
        "API GET /leaderboard": "/api/v1/leaderboard",
        "web /runs": "/runs",
        "web /runs/{id} (ended)": f"/runs/{ids['run']}",
        "web /runs/{id} (running)": f"/runs/{ids['running']}",
        "web /groups": "/groups",
        "web /leaderboard": "/leaderboard",
    }


def measure(base: str, token: str, paths: dict[str, str], n: int, forecast: Forecast) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    with httpx.Client(base_url=base, timeout=120) as api, httpx.Client(base_url=base, timeout=120) as web:
        r = web.post("/signin", data={"token": token}, headers={"Origin": base}, follow_redirects=False)
        assert r.status_code in (302, 303), (r.status_code, r.text[:300])
        for name, path in paths.items():
            client = web if name.startswith("web") else api
            headers = {} if name.startswith("web") else {"Authorization": f"Bearer {token}"}
            forecast.refresh()
            times = []
            for i in range(n + 3):
                t = time.perf_counter()
                resp = client.get(path, headers=headers)
                took = (time.perf_counter() - t) * 1000
                assert resp.status_code == 200 and "signin" not in str(resp.url), (name, resp.status_code, resp.text[:300])
                if i >= 3:
                    times.append(took)
            times.sort()
            out[name] = (statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000, help="team A's queued runs, and the runs of its published group")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page and phase")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/team_isolation.md")
    parser.add_argument("--keep", action="store_true", help="leave the database for EXPLAIN (drop it by hand, or by the next run)")
    args = parser.parse_args()
    rng = random.Random(17)
    url = create_database()
    home = Path(tempfile.mkdtemp(prefix="caddie-bench-iso-"))
    settings = Settings(database_url=url, home=home, provided_hardware=PROVIDED)
    proc = None
    forecast = None
    try:
        maker = get_sessionmaker(url)
        with maker() as s:
            tokens = {}
            for name in ("team-a", "team-b"):
                team, user = accounts.create_team(s, name), accounts.create_user(s, f"{name}-user")
                accounts.add_member(s, team, user)
                tokens[name] = accounts.create_token(s, user, "bench")[1]
            s.commit()
        ids = team_b(maker, settings, tokens["team-b"], rng)
        forecast = Forecast(maker, settings)
        port = free_port()
        proc = start_api(url, home, port)
        base = f"http://127.0.0.1:{port}"
        paths = pages(ids)
        idle = measure(base, tokens["team-b"], paths, args.requests, forecast)
        print("idle", idle, flush=True)
        took = team_a(maker, settings, tokens["team-a"], args.runs, rng)
        print("team A written", took, flush=True)
        # As autovacuum would have by now (30,000 updated rows pass its thresholds within its one-minute
        # nap): statistics for the planner and a visibility map for index-only scans.
        with get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        forecast = Forecast(maker, settings)
        loaded = measure(base, tokens["team-b"], paths, args.requests, forecast)
        print("loaded", loaded, flush=True)
        with maker() as s:
            counts = {t: s.scalar(text(f"SELECT count(*) FROM {t}")) for t in ("runs", "run_events", "metrics", "log_chunks", "run_groups")}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if not args.keep:
            drop_database(url)
    rows = []
    for name in paths:
        (i50, i95), (l50, l95) = idle[name], loaded[name]
        ratio = l50 / i50 if i50 else float("inf")
        rows.append(f"| {name} | {i50:.1f} | {i95:.1f} | {l50:.1f} | {l95:.1f} | {ratio:.2f}x{' **over 2x**' if ratio > 2 else ''} |")
    tick_s = f"{statistics.median(forecast.took):.2f} s" if forecast is not None and forecast.took else "n/a"
    report = f"""# Team isolation: team B's pages, idle and with team A's {args.runs:,} + {args.runs:,} runs (issue 17 item 5)

Command: `.venv/bin/python bench/team_isolation.py --runs {args.runs} --requests {args.requests}`

Setup: PostgreSQL database `{DB_NAME}` on 127.0.0.1:5432 (created, migrated to head, dropped by the bench);
the API in uvicorn (one worker process, no access log) on loopback, one request at a time; the queue forecast
stored by the bench for the control worker, between two pages' timed loops, whenever older than
{settings.queue_forecast_interval_s:g} s (a tick with A's runs present: median {tick_s}, untimed). Team B: 12 runs (4 SUCCEEDED, published, 200 points each, archived
log; 4 RUNNING with log chunks; 4 QUEUED). Team A, written after the idle round: {args.runs:,} QUEUED runs
(submit_runs, 25 configs) and a published group of {args.runs:,} SUCCEEDED runs (4 events, 20 metric points
each, 5 log chunks for one run in ten), then VACUUM ANALYZE (as autovacuum would). Rows then: {counts}.
Time to write team A: {", ".join(f"{k} {v:.0f} s" for k, v in took.items())}.
Machine: {os.cpu_count()} CPUs shared with other work; {args.requests} timed requests per page after 3 warm-up ones.

| team B's page | idle p50 ms | idle p95 ms | with A p50 ms | with A p95 ms | p50 ratio |
|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
