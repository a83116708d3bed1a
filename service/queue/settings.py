"""Scheduling settings shared by the API (queue forecasts) and the worker (dispatch).

One definition: ``service.core.settings.Settings`` and ``worker.settings.WorkerSettings``
both inherit these fields, so the forecast the API shows uses the capacity,
budgets and time estimates the scheduler decides with.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.queue.policy import parse_capacity


class SchedulingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADDIE_", extra="ignore")

    max_concurrent_runs: int = Field(1, ge=0)  # per hardware string, unless `capacity` names it
    capacity: str = Field("", pattern=r"^\s*([^=,\s]+\s*=\s*\d+\s*(,\s*[^=,\s]+\s*=\s*\d+\s*)*)?$")  # per hardware, e.g. "H100:8=2,cpu=4"
    # Team budgets are GPU-hours billed (service.billing.accounting) over a rolling period of this many days.
    budget_period_days: float = Field(30.0, gt=0)
    expected_run_hours: float = Field(1 / 3, gt=0)  # fair-share charge of one started run
    retry_backoff_s: float = Field(60.0, ge=0)  # a requeued run waits this long, doubled per attempt
    # A run's expected node time = its training cap (MAX_WALLCLOCK_SECONDS, else the
    # track's 600 s) + this: provisioning, setup, data download, evaluation (up to
    # 600 s) and upload. Budgets refuse a run whose expected cost would not fit;
    # queue forecasts use it as the run's length.
    run_overhead_s: float = Field(1200.0, ge=0)
    # Queue forecasts (service/queue/positions.py): each simulated start re-runs the policy over the
    # whole queue, so the forecast stops after this many starts ("beyond the horizon") ...
    queue_forecast_max_starts: int = Field(200, ge=1)
    # The control worker computes the forecast every this many seconds and stores it (queue_estimates)
    # for every API replica to read (worker/control/forecast.py, service/queue/stored.py) ...
    queue_forecast_interval_s: float = Field(10.0, gt=0)
    # ... an API trusts a stored forecast younger than this; older (worker down) or none, it
    # computes one itself, as below, and logs that it does ...
    queue_forecast_stale_s: float = Field(60.0, gt=0)
    # ... and a run the stored forecast lacks (submitted or requeued since) is forecast in the
    # API only while the queue is this small (cheap); past it, it waits for the next stored one.
    queue_forecast_inline_max: int = Field(1000, ge=0)
    # An API computing the forecast itself reuses it for this many seconds (0: every request computes it).
    queue_forecast_ttl_s: float = Field(10.0, ge=0)

    @property
    def capacity_table(self) -> dict[str, int]:
        return parse_capacity(self.capacity, self.max_concurrent_runs)
