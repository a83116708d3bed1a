"""bench/scale_out.py's reading of the control workers' logs: Celery's task lines (faults.task_runs) and the
ticks of several workers merged into one count and cadence per kind (tick_stats)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from bench.faults import task_runs
from bench.scale_out import tick_stats

LOG = """\
[2026-12-07 22:55:54,636: INFO/MainProcess] Task caddie.forecast_tick[22b64d28-1e8a-457c-8b4e-649221970811] received
[2026-12-07 22:55:54,650: INFO/MainProcess] queue forecast of 0 queued runs: computed in 0.007 s, stored in 0.004 s (0 rows changed)
[2026-12-07 22:55:54,651: INFO/MainProcess] Task caddie.forecast_tick[22b64d28-1e8a-457c-8b4e-649221970811] succeeded in 0.01439502099992751s: 0
[2026-12-07 22:55:54,661: INFO/MainProcess] Task caddie.schedule_tick[0473ea00-b6b5-4389-a42a-acb0b8bd09db] succeeded in 8.5e-05s: []
[2026-12-07 22:55:55,000: WARNING/MainProcess] Task caddie.janitor_tick[1] succeeded in 1.0s: 0
"""


def test_task_runs_reads_only_celerys_info_success_lines(tmp_path: Path) -> None:
    log = tmp_path / "control-worker-1.log"
    log.write_text(LOG)
    runs = task_runs(log)
    assert [(name, seconds) for _, name, seconds in runs] == [("caddie.forecast_tick", 0.01439502099992751), ("caddie.schedule_tick", 8.5e-05)]
    assert runs[0][0] == datetime(2026, 12, 7, 22, 55, 54, 651000).astimezone().timestamp()  # the log's local time


def test_tick_stats_merges_workers_into_one_cadence_per_kind() -> None:
    # (when it ended, task, seconds): the gaps are between starts (end less duration), as beat sent them
    one = [(100.0, "caddie.forecast_tick", 1.5), (105.0, "caddie.schedule_tick", 0.02), (115.0, "caddie.janitor_tick", 0.3),
           (120.0, "caddie.forecast_tick", 1.7), (999.0, "caddie.forecast_tick", 1.0)]  # fmt: skip
    two = [(110.0, "caddie.forecast_tick", 1.6), (110.5, "caddie.schedule_tick", 0.03), (130.0, "caddie.janitor_tick", 0.4),
           (111.0, "caddie.webhook_tick", 0.01), (50.0, "caddie.janitor_tick", 0.2)]  # fmt: skip
    stats = tick_stats({"control1": one, "control2": two}, start=100.0, end=130.0)
    forecast = stats["forecast"]
    assert (forecast.count, forecast.by_worker, forecast.gaps) == (3, {"control1": 2, "control2": 1}, [9.9, 9.9])  # started 98.5, 108.4, 118.3
    assert sorted(forecast.seconds) == [1.5, 1.6, 1.7]
    assert (stats["schedule"].count, stats["schedule"].gaps) == (2, [5.5])
    assert (stats["janitor"].count, stats["janitor"].by_worker, stats["janitor"].gaps) == (2, {"control1": 1, "control2": 1}, [14.9])
    assert set(stats) == {"forecast", "schedule", "janitor"}  # the webhook tick is not counted
