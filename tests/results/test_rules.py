"""service.results.rules: every rule below, at and above its limit (pure, plain values)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from service.results.rules import (
    RULE_NAMES,
    Check,
    RunFacts,
    Verdict,
    check_artifact_bytes,
    check_code_revision,
    check_eval_time,
    check_full_val,
    check_no_val_in_train,
    check_run,
    check_train_time,
    check_ttt_protocol,
    overall,
    summarise_group,
)

PASS, FAIL, NC = Verdict.PASS, Verdict.FAIL, Verdict.NOT_COMPARABLE
TOTAL = 62_021_631  # target tokens of the validation split (split tokens - 1)


def facts(**over: object) -> RunFacts:
    """A record-track run on 8x H100 that passes every rule."""
    base = RunFacts(
        track="10min_16mb", hardware="H100:8", artifact_bytes=15_900_000, train_seconds=599.0, eval_seconds=530.0,
        val_tokens_scored=TOTAL, val_tokens_total=TOTAL, ttt_protocol="score_first",
        train_shards=("fineweb_train_000000.bin", "fineweb_train_000001.bin"), val_shards=("fineweb_val_000000.bin",),
        trainer_revision="0123abcd", gpu_name="NVIDIA H100 80GB HBM3", world_size=8,
        train_fingerprints=("aa" * 32, "bb" * 32), val_fingerprints=("cc" * 32,), code_sha256="dd" * 32, code_dirty=False,
    )
    return replace(base, **over)


def by_rule(checks: list[Check]) -> dict[str, Check]:
    return {c.rule: c for c in checks}


def test_a_compliant_run_passes_every_rule_in_order() -> None:
    checks = check_run(facts())
    assert [c.rule for c in checks] == list(RULE_NAMES)
    assert [c.verdict for c in checks] == [PASS] * len(RULE_NAMES)
    assert overall(checks) is PASS


# --- artifact bytes ----------------------------------------------------------------------
@pytest.mark.parametrize(("size", "verdict"), [(15_999_999, PASS), (16_000_000, PASS), (16_000_001, FAIL), (0, PASS)])
def test_artifact_bytes_at_and_around_the_limit(size: int, verdict: Verdict) -> None:
    c = check_artifact_bytes(facts(artifact_bytes=size))
    assert (c.verdict, c.figure, c.limit) == (verdict, size, 16_000_000)
    assert f"{size:,}" in c.reason and "16,000,000" in c.reason


def test_artifact_over_the_limit_says_by_how_much() -> None:
    assert "over by 1" in check_artifact_bytes(facts(artifact_bytes=16_000_001)).reason


@given(st.integers(min_value=0, max_value=10**9))
def test_artifact_passes_iff_at_most_16_000_000_bytes(size: int) -> None:
    c = check_artifact_bytes(facts(artifact_bytes=size))
    assert c.verdict is (PASS if size <= 16_000_000 else FAIL)


# --- training and evaluation time ----------------------------------------------------------
TIME_RULES = [("train_seconds", check_train_time, "training"), ("eval_seconds", check_eval_time, "scored evaluation")]


@pytest.mark.parametrize(("field", "rule", "what"), TIME_RULES)
@pytest.mark.parametrize(("seconds", "verdict", "shown"), [
    (599.9, PASS, "599.9"), (600.0, PASS, "600.0"), (600.001, FAIL, "600.001"), (601.0, FAIL, "601.0"),
])
def test_time_at_and_around_600_s_on_8x_h100(field: str, rule, what: str, seconds: float, verdict: Verdict, shown: str) -> None:  # noqa: ANN001
    c = rule(facts(**{field: seconds}))
    assert (c.verdict, c.figure, c.limit) == (verdict, seconds, 600.0)
    # The reason names the figure as it is, never rounded onto the limit ("600.0 s > 600 s").
    assert c.reason.startswith(f"{what} {shown} s") and "600 s" in c.reason


@pytest.mark.parametrize(("seconds", "verdict"), [(600.137, PASS), (600.2, PASS), (600.201, FAIL)])
def test_a_run_stopped_by_its_own_cap_gets_the_challenges_tolerance(seconds: float, verdict: Verdict) -> None:
    """The challenge accepted capped records whose logs say up to 600.137 s; caddie allows 0.2 s and says so."""
    c = check_train_time(facts(train_seconds=seconds, stopped_by_cap=True))
    assert c.verdict is verdict and c.limit == 600.2
    if verdict is PASS:
        assert "own wallclock cap" in c.reason and "0.2 s" in c.reason
    assert check_train_time(facts(train_seconds=600.137, stopped_by_cap=False)).verdict is FAIL  # not stopped by its cap: no tolerance


def test_diagnostic_evaluations_are_shown_not_counted() -> None:
    c = check_eval_time(facts(eval_seconds=525.6, diagnostic_eval_seconds=82.4))
    assert c.verdict is PASS and c.figure == 525.6 and "82.4 s more, not counted" in c.reason


@pytest.mark.parametrize(("field", "rule", "what"), TIME_RULES)
def test_just_under_the_limit_is_not_shown_as_the_limit(field: str, rule, what: str) -> None:  # noqa: ANN001
    c = rule(facts(**{field: 599.96}))
    assert c.verdict is PASS and "599.96 s <= 600 s" in c.reason


@pytest.mark.parametrize(("field", "rule", "what"), TIME_RULES)
@pytest.mark.parametrize("hardware", ["H100:1", "cpu", "H200:8", "H100:8"])
@pytest.mark.parametrize("seconds", [1.0, 600.0, 900.0])
def test_time_without_reported_hardware_is_not_comparable_whatever_the_spec(field: str, rule, what: str, hardware: str, seconds: float) -> None:  # noqa: ANN001
    """The spec is what was asked for; a run that does not say what it ran on is not judged."""
    c = rule(facts(hardware=hardware, gpu_name=None, world_size=None, **{field: seconds}))
    assert c.verdict is NC
    assert "did not report" in c.reason and "8x H100 SXM" in c.reason and "600 s" in c.reason


@pytest.mark.parametrize(("field", "rule", "what"), TIME_RULES)
def test_time_is_judged_from_the_reported_node_not_the_spec(field: str, rule, what: str) -> None:  # noqa: ANN001
    """A spec of cpu that really ran on 8x H100 SXM is judged; an H100:8 spec that ran on the CPU is not."""
    assert rule(facts(hardware="cpu", **{field: 500.0})).verdict is PASS
    assert rule(facts(hardware="H100:8", gpu_name="cpu", world_size=1, **{field: 500.0})).verdict is NC


@pytest.mark.parametrize(("field", "rule", "what"), TIME_RULES)
@pytest.mark.parametrize("gpu", ["NVIDIA H100 PCIe", "NVIDIA H100 NVL"])
def test_pcie_and_nvl_h100_are_not_the_records_sxm(field: str, rule, what: str, gpu: str) -> None:  # noqa: ANN001
    c = rule(facts(gpu_name=gpu, **{field: 100.0}))
    assert c.verdict is NC and gpu in c.reason and "SXM" in c.reason


@pytest.mark.parametrize(("field", "rule", "what"), TIME_RULES)
@pytest.mark.parametrize(("gpu_name", "world_size", "named"), [
    ("NVIDIA H200", 8, "NVIDIA H200"), ("cpu", 8, "cpu"), ("NVIDIA H100 80GB HBM3", 1, "1x NVIDIA H100"),
])
def test_time_on_a_node_that_was_not_8x_h100_is_not_comparable(field: str, rule, what: str, gpu_name: str, world_size: int, named: str) -> None:  # noqa: ANN001
    """The spec said H100:8, but the result says the trainer ran on something else."""
    c = rule(facts(gpu_name=gpu_name, world_size=world_size, **{field: 100.0}))
    assert c.verdict is NC and named in c.reason


@pytest.mark.parametrize(("field", "rule", "what"), TIME_RULES)
def test_time_off_the_record_track_is_not_comparable_even_on_8x_h100(field: str, rule, what: str) -> None:  # noqa: ANN001
    c = rule(facts(track="unlimited", **{field: 100.0}))
    assert c.verdict is NC and "10min_16mb" in c.reason and "unlimited" in c.reason and "600 s" in c.reason


@given(
    hardware=st.one_of(st.sampled_from(["H100 PCIe", "NVIDIA H100 NVL", "H200", "A100", "cpu", "NVIDIA H200 SXM"]),
                       st.text(max_size=12)).filter(lambda h: "H100" not in h.upper() or "PCIE" in h.upper() or "NVL" in h.upper()),
    train=st.floats(min_value=0, max_value=1e5, allow_nan=False),
    evaluation=st.floats(min_value=0, max_value=1e5, allow_nan=False),
)
def test_timing_never_passes_off_8x_h100(hardware: str, train: float, evaluation: float) -> None:
    for c in check_run(facts(hardware=hardware, gpu_name=hardware, train_seconds=train, eval_seconds=evaluation)):
        if c.rule in ("train_time", "eval_time"):
            assert c.verdict is NC


# --- full validation split ----------------------------------------------------------------
@pytest.mark.parametrize(("scored", "verdict"), [(TOTAL, PASS), (TOTAL - 1, FAIL), (1_000_000, FAIL)])
def test_full_val_every_target_token_scored(scored: int, verdict: Verdict) -> None:
    c = check_full_val(facts(val_tokens_scored=scored))
    assert (c.verdict, c.figure, c.limit) == (verdict, scored, TOTAL)
    assert f"{scored:,}" in c.reason and f"{TOTAL:,}" in c.reason


def test_full_val_says_how_many_tokens_were_never_scored() -> None:
    assert "(1 fewer than" in check_full_val(facts(val_tokens_scored=TOTAL - 1)).reason


def test_full_val_counts_what_the_challenges_loader_scores_as_full() -> None:
    """The challenge's loader scores (N-1) // seq_len whole sequences; the (N-1) mod seq_len
    tail it drops is no missing data (the accepted records all scored that way)."""
    floor = TOTAL - TOTAL % 2048  # 62,021,632 targets... the records' loader scores 62,021,632 -> 30,283 x 2048
    ok = check_full_val(facts(val_tokens_scored=floor, eval_seq_len=2048))
    assert ok.verdict is PASS and "2048" in ok.reason and ok.limit == floor
    short = check_full_val(facts(val_tokens_scored=floor - 1, eval_seq_len=2048))
    assert short.verdict is FAIL and "(1 fewer than" in short.reason
    assert check_full_val(facts(val_tokens_scored=floor)).verdict is FAIL  # without the seq_len no tail is excused


# --- TTT protocol ----------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["score_first", "none"])
def test_score_first_or_no_ttt_passes(protocol: str) -> None:
    c = check_ttt_protocol(facts(ttt_protocol=protocol))
    assert c.verdict is PASS and repr(protocol) in c.reason and "'score_first'" in c.reason


@pytest.mark.parametrize("protocol", ["pre_adapt", "multi_epoch", "adapt_first", "", "SCORE_FIRST"])
def test_any_other_ttt_protocol_fails(protocol: str) -> None:
    c = check_ttt_protocol(facts(ttt_protocol=protocol))
    assert (c.verdict, c.figure, c.limit) == (FAIL, protocol, "score_first")
    assert repr(protocol) in c.reason and "'score_first'" in c.reason


# --- no validation data in training -----------------------------------------------------------
def test_a_validation_shard_among_the_training_files_fails() -> None:
    c = check_no_val_in_train(facts(train_shards=("a.bin", "holdout.bin"), val_shards=("holdout.bin",)))
    assert c.verdict is FAIL and "holdout.bin" in c.reason and c.figure == 1


def test_a_fineweb_val_file_among_the_training_files_fails_even_if_not_listed_as_val() -> None:
    c = check_no_val_in_train(facts(train_shards=("fineweb_train_000000.bin", "fineweb_val_000003.bin"), val_shards=()))
    assert c.verdict is FAIL and "fineweb_val_000003.bin" in c.reason


def test_training_files_without_validation_data_pass() -> None:
    c = check_no_val_in_train(facts())
    assert c.verdict is PASS and "2 training file(s)" in c.reason and "1 validation shard(s)" in c.reason


def test_a_renamed_validation_shard_fails_by_its_content() -> None:
    """A validation shard copied under a training name: the names pass, the content does not."""
    c = check_no_val_in_train(facts(train_shards=("fineweb_train_000000.bin", "fineweb_train_000099.bin"),
                                    train_fingerprints=("aa" * 32, "cc" * 32)))
    assert c.verdict is FAIL and c.figure == 1 and "content of a validation shard" in c.reason


def test_without_fingerprints_no_val_in_train_is_not_comparable() -> None:
    c = check_no_val_in_train(facts(train_fingerprints=None))
    assert c.verdict is NC and "fingerprints" in c.reason


# --- code revision ---------------------------------------------------------------------------
@pytest.mark.parametrize("revision", [None, "", "   "])
def test_a_missing_code_hash_fails(revision: str | None) -> None:
    c = check_code_revision(facts(trainer_revision=revision, code_sha256=None))
    assert c.verdict is FAIL and "hash of the code that ran" in c.reason


def test_a_git_commit_alone_fails_uncommitted_edits_would_hide() -> None:
    c = check_code_revision(facts(trainer_revision="0123abcd", code_sha256=None))
    assert c.verdict is FAIL and "0123abcd" in c.reason and "uncommitted" in c.reason


@pytest.mark.parametrize(("dirty", "said"), [(True, "dirty"), (False, "clean"), (None, "not reported")])
def test_a_code_hash_passes_and_says_the_dirty_flag(dirty: bool | None, said: str) -> None:
    c = check_code_revision(facts(code_dirty=dirty))
    assert c.verdict is PASS and "dddddddddddd" in c.reason and "0123abcd" in c.reason and said in c.reason


def test_a_revision_that_is_the_codes_hash_passes() -> None:
    c = check_code_revision(facts(code_sha256=None, trainer_revision="sha256:0011223344556677"))
    assert c.verdict is PASS and "001122334455" in c.reason and c.figure == "0011223344556677"


# --- figures the run never reported --------------------------------------------------------------
@pytest.mark.parametrize(("missing", "rule", "named"), [
    ({"artifact_bytes": None}, "artifact_bytes", "artifact size"),
    ({"train_seconds": None}, "train_time", "training time"),
    ({"eval_seconds": None}, "eval_time", "evaluation time"),
    ({"val_tokens_scored": None}, "full_val", "validation tokens"),
    ({"val_tokens_total": None}, "full_val", "validation tokens"),
    ({"ttt_protocol": None}, "ttt_protocol", "TTT protocol"),
    ({"train_fingerprints": None}, "no_val_in_train", "training and validation files"),
])
def test_a_missing_figure_is_not_comparable_with_a_reason(missing: dict, rule: str, named: str) -> None:
    c = by_rule(check_run(facts(**missing)))[rule]
    assert c.verdict is NC and "did not report" in c.reason and named in c.reason


def test_from_result_reads_result_json_and_the_run_columns_win() -> None:
    result = {"total_bytes": 16_000_001, "train_seconds": 700.0, "eval_seconds": 10.0, "val_tokens_scored": 5,
              "val_tokens_total": 5, "ttt_protocol": "none", "train_shards": ["t.bin"], "val_shards": ["v.bin"],
              "trainer_revision": "abc", "gpu_name": "NVIDIA H100", "world_size": 8, "train_fingerprints": ["a"],
              "val_fingerprints": ["b"], "code_sha256": "c", "code_dirty": False}
    f = RunFacts.from_result(track="10min_16mb", hardware="H100:8", allow_noncompliant=False, result=result,
                             artifact_bytes=15_000_000, train_seconds=500.0)
    assert (f.artifact_bytes, f.train_seconds, f.eval_seconds, f.ttt_protocol, f.world_size) == (15_000_000, 500.0, 10.0, "none", 8)
    assert overall(check_run(f)) is PASS
    empty = RunFacts.from_result(track="10min_16mb", hardware="H100:8", allow_noncompliant=False, result=None)
    assert {c.rule: c.verdict for c in check_run(empty)} == {
        "artifact_bytes": NC, "train_time": NC, "eval_time": NC, "full_val": NC, "ttt_protocol": NC,
        "no_val_in_train": NC, "code_revision": FAIL,
    }


# --- allow_noncompliant ----------------------------------------------------------------------------
def test_allow_noncompliant_turns_passes_into_not_comparable_and_keeps_failures() -> None:
    checks = by_rule(check_run(facts(allow_noncompliant=True, artifact_bytes=16_000_001)))
    assert checks["artifact_bytes"].verdict is FAIL
    others = [c for name, c in checks.items() if name != "artifact_bytes"]
    assert all(c.verdict is NC and "allow_noncompliant" in c.reason for c in others)
    assert overall(checks.values()) is FAIL
    assert overall(check_run(facts(allow_noncompliant=True))) is NC  # never a pass


# --- overall and per group ------------------------------------------------------------------------
def _c(rule: str, verdict: Verdict, reason: str = "") -> Check:
    return Check(rule, verdict, reason or f"{rule} {verdict.value}")


def test_overall_fail_beats_not_comparable_beats_pass_and_empty_is_not_comparable() -> None:
    assert overall([_c("a", PASS), _c("b", PASS)]) is PASS
    assert overall([_c("a", PASS), _c("b", NC)]) is NC
    assert overall([_c("a", NC), _c("b", FAIL), _c("c", PASS)]) is FAIL
    assert overall([]) is NC


def test_check_round_trips_through_its_dict() -> None:
    c = check_artifact_bytes(facts(artifact_bytes=16_000_001))
    d = c.to_dict()
    assert d == {"rule": "artifact_bytes", "verdict": "fail", "reason": c.reason, "figure": 16_000_001, "limit": 16_000_000}
    assert Check.from_dict(d) == c


def test_summarise_group_takes_the_worst_verdict_per_rule_with_counts_and_distinct_reasons() -> None:
    ok = check_run(facts())
    big = check_run(facts(artifact_bytes=16_500_000))
    slow_cpu = check_run(facts(hardware="cpu", gpu_name="cpu", world_size=1))
    summary = {s.rule: s for s in summarise_group([ok, big, big, slow_cpu])}
    assert list(summary) == list(RULE_NAMES)
    art = summary["artifact_bytes"]
    assert art.verdict is FAIL and art.counts == {"pass": 2, "fail": 2, "not_comparable": 0}
    assert art.reasons == ["artifact 16,500,000 bytes > 16,000,000 (over by 500,000)"]  # one reason for two runs
    assert summary["train_time"].verdict is NC and summary["train_time"].counts == {"pass": 3, "fail": 0, "not_comparable": 1}
    assert summary["ttt_protocol"].verdict is PASS and summary["ttt_protocol"].counts["pass"] == 4
    assert summary["full_val"].to_dict()["verdict"] == "pass"


def test_summarise_no_runs_is_not_comparable_everywhere() -> None:
    assert all(s.verdict is NC and s.counts == {"pass": 0, "fail": 0, "not_comparable": 0} for s in summarise_group([]))
