"""A burst of submits against the real stack: how many scheduler ticks it costs, what a tick with no free
slot costs, and whether the janitor keeps its cadence (issue 23, items 4 and 6). Not a test.

    python bench/tick_burst.py [--submits 1000] [--seconds 15] [--seed-runs 40000 --seed-queued 10000 --teams 50] [--out ...]

What runs is bench/faults.py's stack: its own PostgreSQL and Redis, the API, a runs worker, the control
worker (logging each task it runs, INFO) and beat, CADDIE_ON_SUBMIT_HOOK set as the README says, the
local launcher with 2 slots. Two long stand-in runs take both slots first, so every tick of the burst
finds no free slot. Then --submits runs go up through the API from 8 clients, paced over --seconds.
The control worker's log says when each tick ran and how long it took (Celery's "Task ... succeeded in
Xs" lines): ticks run during the burst and the 30 s after it, the janitor's ticks in that window
against its beat (CADDIE_JANITOR_TICK_S, 15 s). ``--seed-runs``/``--seed-queued``: a history and a backlog
first (bench/api_load.py's seeding, by COPY, over ``--teams`` teams; its queued runs are moved to this
machine's hardware, so they wait for the two held slots and every tick reads them; the seeded RUNNING ones are
marked FAILED, so the janitor has no node to look for).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.api_load import seed_database  # noqa: E402
from bench.faults import STAND_IN, Postgres, Redis, Stack, bootstrap, hold_slots, stack_env, task_runs  # noqa: E402

AFTER_S = 30.0  # the window watched after the last submit


def submit_burst(url: str, token: str, n: int, seconds: float, clients: int = 8) -> tuple[float, float, list[str]]:
    """n submits paced evenly over ``seconds`` from ``clients`` threads; (start, end, errors)."""
    errors: list[str] = []
    t0 = time.time() + 0.5
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            for i in range(k, n, clients):
                delay = t0 + i * seconds / n - time.time()
                if delay > 0:
                    time.sleep(delay)
                r = c.post("/runs", json={"name": "burst", "track": "unlimited", "hardware": "cpu", "config": {"ITERATIONS": 10}, "seed": 10_000 + i})
                if r.status_code != 201:
                    with lock:
                        errors.append(f"{r.status_code} {r.text[:120]}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return t0, time.time(), errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--submits", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--seed-runs", type=int, default=0, help="runs seeded first (history and backlog)")
    ap.add_argument("--seed-queued", type=int, default=0, help="of which QUEUED")
    ap.add_argument("--teams", type=int, default=50)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tick_burst.md")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="caddie-burst-"))
    os.chmod(root, 0o755)
    home = root / "home"
    home.mkdir()
    (home / "stand_in.py").write_text(STAND_IN)
    pg, redis = Postgres(root), Redis(root)
    stack = None
    try:
        pg.init()
        redis.start()
        tokens = bootstrap(pg.url())
        stack = Stack(home, stack_env(home, pg.url(), redis.url))
        stack.argv["control worker"] = [a if a != "WARNING" else "INFO" for a in stack.argv["control worker"]]
        stack.start()
        hold_slots(stack.url, tokens["a"], iterations=6000, limit_s=60)  # both slots busy for the whole window: 6,000 steps of 0.1 s
        # the backlog comes once the slots are held, so that the fair share cannot start it ahead of them
        if args.seed_runs:
            seed_database(pg.url(), args.seed_runs, teams=args.teams, queued=args.seed_queued or None)
            with create_engine(pg.url()).begin() as conn:  # no node behind them: nothing for the janitor to recover
                conn.execute(text("UPDATE runs SET status = 'FAILED', finished_at = now() WHERE status IN ('RUNNING', 'PROVISIONING') AND name <> 'hold'"))
                # the backlog waits for the same slots as the burst (this machine's), both held: no tick may start one
                conn.execute(text("UPDATE runs SET hardware = 'cpu' WHERE status = 'QUEUED' AND name <> 'hold'"))
        time.sleep(20)  # a quiet stretch: the ticks of beat alone
        quiet_from = time.time() - 20
        start, stop, errors = submit_burst(stack.url, tokens["a"], args.submits, args.seconds)
        time.sleep(AFTER_S)
        runs = task_runs(home / "control-worker.log")
        with create_engine(pg.url()).connect() as conn:
            statuses = dict(conn.execute(text("SELECT status, count(*) FROM runs GROUP BY status")).all())
            holders = conn.execute(text("SELECT id, status, left(status_reason, 100), started_at, finished_at FROM runs WHERE name = 'hold'")).all()
            if any(h[1] != "RUNNING" for h in holders):
                print("a holding run is not running:", holders)
            moves = conn.execute(text("SELECT from_status, to_status, actor, left(reason, 80), count(*) FROM run_events "
                                      "WHERE from_status IS NOT NULL GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC LIMIT 8")).all()
    finally:
        if stack is not None:
            stack.stop()
        redis.kill9()
        pg.stop()
    window = [(w, name, s) for w, name, s in runs if start <= w <= stop + AFTER_S]
    quiet = [(w, name, s) for w, name, s in runs if quiet_from <= w < start]
    ticks = [s for _, name, s in window if name == "caddie.schedule_tick"]
    janitor = sorted(w for w, name, _ in window if name == "caddie.janitor_tick")
    gaps = [b - a for a, b in zip(janitor, janitor[1:])]
    quiet_ticks = [s for _, name, s in quiet if name == "caddie.schedule_tick"]
    span = stop + AFTER_S - start
    lines = [
        "## A burst of submits: scheduler ticks, their cost with no free slot, the janitor's cadence (issue 23, items 4 and 6)",
        "",
        f"`python bench/tick_burst.py --submits {args.submits} --seconds {args.seconds:g}"
        + (f" --seed-runs {args.seed_runs} --seed-queued {args.seed_queued} --teams {args.teams}" if args.seed_runs else "") + "` "
        f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end)",
        "",
        "The stack of `bench/faults.py` (its own PostgreSQL and Redis, the API, a runs worker, the control worker, beat;",
        "`CADDIE_ON_SUBMIT_HOOK=worker.notify:runs_submitted`, the local launcher with 2 slots, both held by long runs),",
        (f"{args.seed_runs:,} runs seeded first over {args.teams} teams, {args.seed_queued:,} of them queued (waiting for the held slots); " if args.seed_runs else "")
        + f"then {args.submits} submits through the API from 8 clients over {stop - start:.1f} s ({len(errors)} errors), watched "
        f"until {AFTER_S:.0f} s after the last. Figures from the control worker's own log (Celery's `succeeded in` lines).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| scheduler ticks run in the {span:.0f} s window | **{len(ticks)}** (beat alone would run {span / 5:.0f}: one every 5 s) |",
        f"| one tick, no free slot | median {statistics.median(ticks) * 1000:.1f} ms, max {max(ticks) * 1000:.1f} ms, all {sum(ticks):.2f} s |" if ticks else "| one tick | none ran |",
        f"| the same, quiet (20 s before the burst) | {len(quiet_ticks)} ticks, median {statistics.median(quiet_ticks) * 1000:.1f} ms |" if quiet_ticks else "| quiet ticks | none |",
        f"| janitor ticks in the window | {len(janitor)} (beat: one every 15 s); gaps between them {', '.join(f'{g:.1f}' for g in gaps) or '-'} s |",
        f"| control tasks of any kind in the window | {len(window)}: " + ", ".join(f"{n.split('.')[1]} {sum(1 for _, x, _ in window if x == n)}" for n in sorted({x for _, x, _ in window})) + " |",
    ]
    lines.append(f"| runs by status at the end | {', '.join(f'{k} {v:,}' for k, v in sorted(statuses.items()))} |")
    lines.append("| status changes (from, to, by, why: count) | " + "; ".join(f"{a} -> {b} by {c} ({d}): {n}" for a, b, c, d, n in moves) + " |")
    if errors:
        lines += ["", "Errors: " + "; ".join(errors[:5])]
    with open(args.out, "a") as fh:  # one section per invocation
        fh.write("\n".join(lines) + "\n\n")
    print("\n".join(lines))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
