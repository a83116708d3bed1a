"""What a spec's knobs break of the record track's rules, read before a run starts (pure: plain
values in, plain values out). A submit refuses such a spec unless it says ``allow_noncompliant``;
service/results/rules.py judges the run's own figures after it ends, against the same limits
(trainer/config.py's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.config import TRAIN_LIMIT_SECONDS

RECORD_TRACK = "10min_16mb"  # the challenge's record track: the only one with rules to break


@dataclass(frozen=True)
class SpecProblem:
    knob: str
    value: Any
    reason: str


def spec_noncompliance(config: Mapping[str, Any], track: str) -> list[SpecProblem]:
    """Knobs (normalised overrides keyed by env name) that make a run of ``track``
    incomparable with the challenge's. Only the record track has rules to break."""
    if track != RECORD_TRACK:
        return []
    problems = []
    cap = config.get("MAX_WALLCLOCK_SECONDS")
    if cap is not None and (cap <= 0 or cap > TRAIN_LIMIT_SECONDS):
        what = "turns the wallclock cap off" if cap <= 0 else f"is above the {TRAIN_LIMIT_SECONDS:.0f} s limit"
        problems.append(SpecProblem("MAX_WALLCLOCK_SECONDS", cap, f"{what}; the track trains for at most {TRAIN_LIMIT_SECONDS:.0f} s"))
    limit = config.get("VAL_TOKENS_LIMIT")
    if limit:
        problems.append(SpecProblem("VAL_TOKENS_LIMIT", limit, "scores only part of the validation split; the track scores all of it"))
    stride, seq = config.get("EVAL_STRIDE"), config.get("EVAL_SEQ_LEN", 2048)
    if stride is not None and stride > seq:
        problems.append(SpecProblem("EVAL_STRIDE", stride, f"is above EVAL_SEQ_LEN={seq}, so tokens between windows are never scored"))
    return problems
