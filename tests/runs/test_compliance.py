"""service.runs.compliance: the record track's knobs a spec may not set, at and past each limit."""

from __future__ import annotations

import pytest

from service.runs.compliance import spec_noncompliance


@pytest.mark.parametrize(("cap", "bad"), [(600, False), (600.0, False), (300, False), (600.5, True), (601, True), (0, True), (-1, True)])
def test_wallclock_cap_on_the_record_track(cap: float, bad: bool) -> None:
    problems = spec_noncompliance({"MAX_WALLCLOCK_SECONDS": cap}, "10min_16mb")
    assert [p.knob for p in problems] == (["MAX_WALLCLOCK_SECONDS"] if bad else [])
    if bad:
        assert problems[0].value == cap and "600 s" in problems[0].reason


def test_cap_off_and_cap_too_high_say_different_things() -> None:
    assert "off" in spec_noncompliance({"MAX_WALLCLOCK_SECONDS": 0}, "10min_16mb")[0].reason
    assert "above the 600 s limit" in spec_noncompliance({"MAX_WALLCLOCK_SECONDS": 900}, "10min_16mb")[0].reason


def test_val_token_limit_and_skipping_stride_on_the_record_track() -> None:
    problems = spec_noncompliance({"VAL_TOKENS_LIMIT": 1_000_000, "EVAL_STRIDE": 4096}, "10min_16mb")
    assert [(p.knob, p.value) for p in problems] == [("VAL_TOKENS_LIMIT", 1_000_000), ("EVAL_STRIDE", 4096)]
    assert "EVAL_SEQ_LEN=2048" in problems[1].reason
    assert spec_noncompliance({"EVAL_STRIDE": 64}, "10min_16mb") == []
    assert spec_noncompliance({"EVAL_STRIDE": 1024, "EVAL_SEQ_LEN": 1024}, "10min_16mb") == []
    assert [p.knob for p in spec_noncompliance({"EVAL_STRIDE": 1025, "EVAL_SEQ_LEN": 1024}, "10min_16mb")] == ["EVAL_STRIDE"]


def test_the_unlimited_track_has_no_rules_to_break() -> None:
    config = {"MAX_WALLCLOCK_SECONDS": 0, "VAL_TOKENS_LIMIT": 1000, "EVAL_STRIDE": 99_999}
    assert spec_noncompliance(config, "unlimited") == []
    assert spec_noncompliance({}, "10min_16mb") == []
