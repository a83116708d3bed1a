"""What a budget read costs (issue 23 item 6): `billed_gpu_hours` over a period of many ended runs, the
first read in a process (every run's events) against the next ones (ended runs' spans kept), on a fresh
PostgreSQL database. Not a test.

    .venv/bin/python bench/billing_read.py [--runs 10000] [--teams 50] [--running 16] [--reads 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import insert  # noqa: E402

from service.billing import accounting  # noqa: E402
from service.core.db import get_sessionmaker  # noqa: E402
from service.core.models import Run, RunEvent, utcnow  # noqa: E402
from tests.factories import make_team  # noqa: E402
from tests.fresh_db import fresh_database  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--teams", type=int, default=50)
    ap.add_argument("--running", type=int, default=16)
    ap.add_argument("--reads", type=int, default=5)
    args = ap.parse_args()
    with fresh_database() as url:
        maker = get_sessionmaker(url)
        now = utcnow()
        with maker() as s:
            teams = [make_team(s, f"t{i}") for i in range(args.teams)]
            s.commit()
            rows, events = [], []
            for i in range(args.runs + args.running):
                team, user = teams[i % len(teams)]
                start = now - timedelta(days=25) + timedelta(seconds=i * 200)
                ended = i < args.runs
                rows.append({"id": i + 1, "team_id": team.id, "user_id": user.id, "name": f"r{i}", "seed": i, "group_key": "g", "spec": {},
                             "track": "10min_16mb", "hardware": "H100:8", "status": "SUCCEEDED" if ended else "RUNNING", "attempts": 1,
                             "submitted_at": start, "started_at": start, "finished_at": start + timedelta(minutes=15) if ended else None})  # fmt: skip
                steps = [("QUEUED", "PROVISIONING", start), ("PROVISIONING", "RUNNING", start + timedelta(minutes=2))]
                if ended:
                    steps.append(("RUNNING", "SUCCEEDED", start + timedelta(minutes=15)))
                events += [{"run_id": i + 1, "at": at, "from_status": a, "to_status": b, "actor": "bench"} for a, b, at in steps]
            s.execute(insert(Run), rows)
            s.execute(insert(RunEvent), events)
            s.commit()
        ids = [t.id for t, _ in teams]
        since = now - timedelta(days=30)
        times = []
        for _ in range(args.reads + 1):
            with maker() as s:
                t0 = time.perf_counter()
                used = accounting.billed_gpu_hours(s, ids, since, utcnow())
                times.append(time.perf_counter() - t0)
        accounting._ENDED_SPANS.clear()
        with maker() as s:  # a full read again, as every read was before (nothing kept)
            t0 = time.perf_counter()
            accounting.billed_gpu_hours(s, ids, since, utcnow())
            cold_again = time.perf_counter() - t0
    print(f"{args.runs:,} ended + {args.running} running H100:8 runs over {args.teams} teams, {len(events):,} events; "
          f"billed {sum(used.values()):,.1f} GPU-hours")  # fmt: skip
    print(f"first read (nothing kept): {times[0] * 1000:.0f} ms; again after clearing: {cold_again * 1000:.0f} ms")
    print(f"next {args.reads} reads: median {statistics.median(times[1:]) * 1000:.0f} ms, max {max(times[1:]) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
