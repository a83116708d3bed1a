"""A run with 2M `step:` log lines: how long its page and its metrics take (issue 17 item 5d).

    python bench/run_page_2m.py [--lines 2000000] [--out bench/results/run_page_2m.md]

On a fresh PostgreSQL database of the shared server (created and dropped here), the worker's own
path stores the log: worker.run.log_stream.RunLog reads a 2M-line log in the local launcher's 1 MiB
reads, stores its chunks (under CADDIE_LOG_MAX_BYTES) and its metric points (thinned under
CADDIE_MAX_TRAIN_POINTS), as an executor does. Then the API (in-process, default settings)
serves the run page and every page of GET /runs/{id}/metrics, timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.api.app import create_app  # noqa: E402
from service.core.db import get_sessionmaker  # noqa: E402
from service.core.models import LogChunk, Metric, Run, utcnow  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.teams import accounts  # noqa: E402
from tests.fresh_db import fresh_database  # noqa: E402
from worker.run.log_stream import RunLog  # noqa: E402


class FileLog:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_log(self, _handle: object, offset: int) -> bytes:
        return self.data[offset : offset + (1 << 20)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/run_page_2m.md")
    args = parser.parse_args()
    n = args.lines
    log = "".join(f"step:{i}/{n} train_loss:{6 - i / n:.4f} train_time:{i * 80}ms step_avg:80.00ms\n" for i in range(1, n + 1)).encode()
    worker = Settings()
    with fresh_database() as url:
        maker = get_sessionmaker(url)
        with maker() as s:
            team, user = accounts.create_team(s, "bench"), accounts.create_user(s, "bench")
            accounts.add_member(s, team, user)
            token = accounts.create_token(s, user, "bench")[1]
            s.flush()
            run = Run(team_id=team.id, user_id=user.id, name="loud", spec={}, seed=1, group_key="g", track="unlimited", hardware="cpu",
                      priority=0, status="RUNNING", submitted_at=utcnow() - timedelta(seconds=5))  # fmt: skip
            s.add(run)
            s.commit()
            run_id = run.id
        started = time.monotonic()
        run_log = RunLog(run_id, maker, retry_s=30, script=False, attempt=1, offset=0, base=0,
                         max_train_points=worker.max_train_points, log_max_bytes=worker.log_max_bytes)  # fmt: skip
        source = FileLog(log)
        while run_log.offset < len(log):
            run_log.pull(source, None, final=False, on_points=lambda _p: None)  # type: ignore[arg-type]
        run_log.pull(source, None, final=True, on_points=lambda _p: None)  # type: ignore[arg-type]
        store_s = time.monotonic() - started
        with maker() as s:
            points = s.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == run_id))
            stored = s.scalar(select(func.coalesce(func.sum(func.length(LogChunk.data)), 0)).where(LogChunk.run_id == run_id))
            r = s.get_one(Run, run_id)
            r.status, r.finished_at = "SUCCEEDED", utcnow()
            truncated = r.log_truncated_at
            s.commit()
        settings = Settings(database_url=url, home=Path(os.environ.get("TMPDIR", "/tmp")) / f"caddie-bench-page-{os.getpid()}")
        with TestClient(create_app(settings)) as client:
            client.post("/signin", data={"token": token}, headers={"Origin": "http://testserver"}, follow_redirects=False)
            page_ms = []
            for _ in range(5):
                t = time.monotonic()
                resp = client.get(f"/runs/{run_id}")
                page_ms.append((time.monotonic() - t) * 1000)
                assert resp.status_code == 200 and "loud" in resp.text and "points" in resp.text, resp.url
            t = time.monotonic()
            got, pages, url_ = 0, 0, f"/api/v1/runs/{run_id}/metrics"
            while url_:
                resp = client.get(url_, headers={"Authorization": f"Bearer {token}"})
                got += len(resp.json())
                pages += 1
                link = resp.headers.get("link")
                url_ = link[link.index("<") + 1 : link.index(">")] if link else ""
            metrics_ms = (time.monotonic() - t) * 1000
    text = f"""# A run with {n:,} `step:` log lines (issue 17 item 5d)

Command: `.venv/bin/python bench/run_page_2m.py --lines {n}` (fresh PostgreSQL database on
127.0.0.1:5432; the worker's RunLog stores the log as an executor does, default
CADDIE_LOG_MAX_BYTES {worker.log_max_bytes:,} and CADDIE_MAX_TRAIN_POINTS {worker.max_train_points:,};
the API in-process with default settings). Machine: {os.cpu_count()} CPUs shared with other work.

- Log: {len(log):,} bytes; stored {stored:,} characters (cut at {truncated if truncated is not None else 'no cut'}); stored by the worker in {store_s:.1f} s.
- Metric points stored: **{points:,}** (was one per line: {n:,}).
- Run page (`GET /runs/{{id}}`, signed in): median **{statistics.median(page_ms):.0f} ms**, max {max(page_ms):.0f} ms over 5 (was 27.8 s).
- `GET /runs/{{id}}/metrics`, every page: {got:,} points in {pages} page(s), {metrics_ms:.0f} ms (was 210 MB in 48.8 s).
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
