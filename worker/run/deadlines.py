"""How long a run may hold its node, and how long it may stay silent (pure: no I/O).

A run's deadline is its own caps plus a margin: training (its MAX_WALLCLOCK_SECONDS,
else the track's 600 s) + evaluation (CADDIE_EVAL_CAP_S) + CADDIE_DEADLINE_OVERHEAD_S
(start-up, compile warm-up, serialising the artifact), never above CADDIE_HARD_TIMEOUT_S.
A hung trainer is stopped at its own deadline, not at one limit for every run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.queue.estimates import train_cap_s


@dataclass(frozen=True)
class Deadline:
    train_s: float
    eval_s: float
    overhead_s: float
    ceiling_s: float

    @property
    def seconds(self) -> float:
        return min(self.train_s + self.eval_s + self.overhead_s, self.ceiling_s)

    def describe(self) -> str:
        own = f"training {self.train_s:.0f} s + evaluation {self.eval_s:.0f} s + overhead {self.overhead_s:.0f} s"
        if self.train_s + self.eval_s + self.overhead_s > self.ceiling_s:
            return f"{self.seconds:.0f} s (CADDIE_HARD_TIMEOUT_S; its caps would give {own})"
        return f"{self.seconds:.0f} s ({own})"


def run_deadline(spec: Mapping[str, Any] | None, *, eval_cap_s: float, overhead_s: float, ceiling_s: float) -> Deadline:
    return Deadline(train_cap_s(spec), eval_cap_s, overhead_s, ceiling_s)


def silent_too_long(silent_s: float, limit_s: float) -> bool:
    """The silence watchdog: no new output for more than `limit_s` (0 turns it off)."""
    return limit_s > 0 and silent_s > limit_s
