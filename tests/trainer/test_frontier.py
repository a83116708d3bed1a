"""The 2026-04-27 record's techniques as knobs: each computation checked against the record's own code.

The record's ``train_gpt.py`` is read from ../shared/challenge at test time (never copied into the
repository). Functions nested inside its training loop cannot be imported, so their own source is
taken from the file's syntax tree and executed with the names they close over supplied here.
"""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

from trainer.config import ConfigError, TrainerConfig
from trainer.train import lr_scale_at

RECORD = (Path(__file__).resolve().parents[2] / ".." / "shared" / "challenge" / "records" / "track_10min_16mb"
          / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611" / "train_gpt.py")


def record_function(name: str, **closure):
    """The record's function NAME (at any nesting depth), defined with CLOSURE as its globals."""
    if not RECORD.exists():
        pytest.skip(f"record not found at {RECORD}")
    tree = ast.parse(RECORD.read_text())
    node = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name), None)
    assert node is not None, f"{name} is not in the record's train_gpt.py"
    namespace: dict = dict(closure)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(RECORD), "exec"), namespace)
    return namespace[name]


def test_min_lr_floor_equals_the_records_lr_mul():
    # the record: warm-down over the last WARMDOWN_FRAC of training, floored at MIN_LR; caddie counts it in steps
    h = types.SimpleNamespace(warmdown_frac=0.85, min_lr=0.1)
    lr_mul = record_function("lr_mul", h=h)
    cfg = TrainerConfig(iterations=1000, warmdown_iters=850, min_lr=0.1, max_wallclock_seconds=0)
    ours = [lr_scale_at(s, 0.0, cfg) for s in range(0, 1001)]
    theirs = [lr_mul(s / 1000) for s in range(0, 1001)]
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert min(ours) == 0.1 and ours[0] == 1.0  # the floor is really reached, and it is not the whole curve
    # the default (no floor) still warms down to zero
    assert lr_scale_at(1000, 0.0, TrainerConfig(iterations=1000, warmdown_iters=850, max_wallclock_seconds=0)) == 0.0


def test_min_lr_that_would_keep_late_qat_off_is_refused():
    with pytest.raises(ConfigError) as exc:
        TrainerConfig.from_dict({"MIN_LR": 0.2, "LATE_QAT_THRESHOLD": 0.15})
    assert "MIN_LR" in str(exc.value) and "LATE_QAT_THRESHOLD" in str(exc.value)
    TrainerConfig.from_dict({"MIN_LR": 0.2, "LATE_QAT_THRESHOLD": 0.15, "QAT_ENABLED": 0})  # no QAT: fine
    with pytest.raises(ConfigError, match="MIN_LR"):
        TrainerConfig.from_dict({"MIN_LR": 1.5})
