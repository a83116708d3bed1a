"""`caddie queue`, and the queue line of `caddie show` / the position in `caddie runs`, against the real API."""

from __future__ import annotations

import re
from pathlib import Path

from tests.cli.conftest import Caddie


def undated(line: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", line)


def test_queue_show_and_runs_say_where_queued_runs_stand(caddie: Caddie, spec_file: Path) -> None:
    assert caddie.ok("queue").stdout.strip() == "nothing queued"
    caddie.ok("submit", str(spec_file), "--seeds", "1,2")
    text = caddie.ok("queue").stdout
    rows = [line for line in text.splitlines() if "baseline-10L" in line]
    # One H100:8 slot: the first starts now, the second 30 min later (600 s cap + 1200 s overhead).
    assert len(rows) == 2 and rows[0].split()[0] == "1" and "(now)" in rows[0] and "starting now" in rows[0]
    assert rows[1].split()[0] == "2" and "(in 30 min)" in rows[1] and "waiting for a H100:8 slot" in rows[1]
    run_ids = [int(r.split()[1]) for r in rows]
    # paged as the API pages it (X-Next-Cursor): the first page, then every page with --all
    first = caddie.ok("queue", "--limit", "1").stdout
    assert len([line for line in first.splitlines() if "baseline-10L" in line]) == 1 and "1 shown; more with --all" in first
    every = caddie.ok("queue", "--limit", "1", "--all").stdout
    # The same rows; a start of "now" is the clock's second when asked, which may have turned since.
    assert [undated(line) for line in every.splitlines() if "baseline-10L" in line] == [undated(r) for r in rows] and "more with --all" not in every
    shown = caddie.ok("show", str(run_ids[1])).stdout
    assert "position 2 on H100:8; expected start" in shown and "in 30 min" in shown
    listed = caddie.ok("runs").stdout
    assert "QUEUED #1" in listed and "QUEUED #2" in listed
    caddie.ok("admin", "set-budget", "golfers", "--gpu-hours", "0")
    over = caddie.ok("queue").stdout
    assert "not expected" in over and "over its budget" in over
    caddie.ok("admin", "set-budget", "golfers", "--no-budget")
    for run_id in run_ids:
        caddie.ok("cancel", str(run_id))
