"""What a run is expected to cost before it runs: node time from its time cap, GPU-hours from its hardware."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from service.core.hardware import gpus_of

# The challenge's training limit, used when a spec sets no cap of its own (MAX_WALLCLOCK_SECONDS=0 or absent).
TRACK_TRAIN_CAP_S = 600.0


def train_cap_s(spec: Mapping[str, Any] | None) -> float:
    """The training wallclock cap a spec asks for: its MAX_WALLCLOCK_SECONDS (a trainer knob,
    or a script run's env variable) when > 0, else 600 s."""
    spec = spec or {}
    env = spec.get("env")
    raw = spec.get("MAX_WALLCLOCK_SECONDS", env.get("MAX_WALLCLOCK_SECONDS") if isinstance(env, Mapping) else None)
    try:
        cap = float(raw) if raw is not None else TRACK_TRAIN_CAP_S
    except (TypeError, ValueError):
        cap = TRACK_TRAIN_CAP_S
    return cap if math.isfinite(cap) and cap > 0 else TRACK_TRAIN_CAP_S


def expected_seconds(spec: Mapping[str, Any] | None, overhead_s: float) -> float:
    """Node seconds a run is expected to hold at most: its training cap + the overhead around it."""
    return train_cap_s(spec) + overhead_s


def gpu_hours(hardware: str, seconds: float) -> float:
    """GPU-hours of holding ``hardware`` for ``seconds`` (billed as service.billing.accounting bills)."""
    return gpus_of(hardware) * max(0.0, seconds) / 3600
