"""service.results.groups: a group's figures over its seeds (pure, plain values)."""

from __future__ import annotations

import pytest

from service.results.groups import SeedRow, aggregate, config_diff, eligibility
from service.results.rules import Check, RunFacts, Verdict, check_run
from service.results.statistics import compare

GOOD = tuple(check_run(RunFacts(
    track="10min_16mb", hardware="H100:8", artifact_bytes=15_000_000, train_seconds=590.0, eval_seconds=500.0,
    val_tokens_scored=10, val_tokens_total=10, ttt_protocol="score_first", train_shards=("fineweb_train_000000.bin",),
    val_shards=("fineweb_val_000000.bin",), trainer_revision="abc",
    train_fingerprints=("aa",), val_fingerprints=("bb",), code_sha256="cc", gpu_name="NVIDIA H100 80GB HBM3", world_size=8,
)))
TOO_BIG = tuple(c if c.rule != "artifact_bytes" else Check("artifact_bytes", Verdict.FAIL, "artifact 17,000,000 bytes > 16,000,000",
                                                           17_000_000, 16_000_000) for c in GOOD)


def ok(run_id: int, seed: int, bpb: float, loss: float, size: int, train: float = 590.0, evaluation: float = 500.0,
       checks: tuple[Check, ...] = GOOD) -> SeedRow:
    return SeedRow(run_id=run_id, seed=seed, status="SUCCEEDED", val_bpb=bpb, val_loss=loss, artifact_bytes=size,
                   train_seconds=train, eval_seconds=evaluation, checks=checks)


def mixed_group() -> list[SeedRow]:
    """Three counted seeds, and a failed, a cancelled, a queued, a running and a
    scoreless succeeded run that must not count (the failed one was far better
    and broke a rule: neither may leak into the figures)."""
    return [
        ok(1, 1337, 1.12, 1.89, 15_000_000, 590.0, 500.0),
        SeedRow(run_id=2, seed=42, status="FAILED", status_reason="node lost", val_bpb=0.5, val_loss=0.8,
                artifact_bytes=17_000_000, checks=TOO_BIG),
        ok(3, 2024, 1.10, 1.86, 15_300_000, 595.0, 510.0),
        SeedRow(run_id=4, seed=7, status="CANCELLED", status_reason="cancelled by alice"),
        ok(5, 9, 1.14, 1.92, 15_600_000, 600.0, 520.0),
        SeedRow(run_id=6, seed=8, status="QUEUED"),
        SeedRow(run_id=7, seed=10, status="RUNNING"),
        SeedRow(run_id=8, seed=11, status="SUCCEEDED"),  # no score
    ]


def test_only_succeeded_runs_with_a_score_count_toward_n() -> None:
    stats = aggregate(mixed_group())
    assert stats.n == 3
    assert [r.run_id for r in stats.counted] == [3, 1, 5]  # best first
    assert [(e.run_id, e.seed, e.status) for e in stats.excluded] == [
        (2, 42, "FAILED"), (4, 7, "CANCELLED"), (6, 8, "QUEUED"), (7, 10, "RUNNING"), (8, 11, "SUCCEEDED"),
    ]


def test_each_excluded_run_says_why_naming_its_status() -> None:
    reasons = {e.run_id: e.reason for e in aggregate(mixed_group()).excluded}
    assert reasons[2] == "failed: node lost; not counted"
    assert reasons[4] == "cancelled: cancelled by alice; not counted"
    assert reasons[6] == "queued; not counted until it succeeds"
    assert reasons[7] == "running; not counted until it succeeds"
    assert "succeeded without a val_bpb" in reasons[8] and "not counted" in reasons[8]


def test_mean_and_sample_std_by_hand() -> None:
    stats = aggregate(mixed_group())
    # val_bpb 1.10, 1.12, 1.14: mean 1.12; deviations -0.02, 0, 0.02 -> s² = 0.0008 / 2 = 0.0004, s = 0.02
    assert stats.val_bpb.n == 3
    assert stats.val_bpb.mean == pytest.approx(1.12, abs=1e-12)
    assert stats.val_bpb.std == pytest.approx(0.02, abs=1e-12)
    assert (stats.val_bpb.min, stats.val_bpb.max) == (1.10, 1.14)
    # val_loss 1.86, 1.89, 1.92: mean 1.89; s² = (0.03² + 0 + 0.03²) / 2 = 0.0009, s = 0.03
    assert stats.val_loss.mean == pytest.approx(1.89, abs=1e-12)
    assert stats.val_loss.std == pytest.approx(0.03, abs=1e-12)


def test_std_with_uneven_values_by_hand() -> None:
    rows = [ok(1, 1, 1.0, 2.0, 1), ok(2, 2, 1.0, 2.0, 1), ok(3, 3, 1.0, 2.0, 1), ok(4, 4, 1.4, 2.0, 1)]
    # mean 1.1; deviations -0.1 x3, 0.3 -> sum of squares 0.03 + 0.09 = 0.12; s² = 0.12 / 3 = 0.04; s = 0.2
    stats = aggregate(rows)
    assert stats.val_bpb.mean == pytest.approx(1.1) and stats.val_bpb.std == pytest.approx(0.2)
    assert stats.val_loss.std == 0.0


def test_best_and_worst_seed_and_means_of_bytes_and_seconds() -> None:
    stats = aggregate(mixed_group())
    assert (stats.best.seed, stats.worst.seed) == (2024, 9)
    assert stats.mean_artifact_bytes == pytest.approx(15_300_000)  # (15.0 + 15.3 + 15.6) M / 3; the failed run's 17 M is out
    assert stats.max_artifact_bytes == 15_600_000
    assert stats.mean_train_seconds == pytest.approx((590 + 595 + 600) / 3)
    assert stats.mean_eval_seconds == pytest.approx(510.0)


def test_checks_are_summarised_over_counted_runs_only() -> None:
    stats = aggregate(mixed_group())
    assert stats.verdict is Verdict.PASS  # the failed run's oversize artifact does not count
    art = next(r for r in stats.rules if r.rule == "artifact_bytes")
    assert art.counts == {"pass": 3, "fail": 0, "not_comparable": 0}


def test_a_counted_run_that_breaks_a_rule_fails_the_group() -> None:
    rows = mixed_group() + [ok(9, 99, 1.13, 1.90, 17_000_000, checks=TOO_BIG)]
    stats = aggregate(rows)
    assert stats.n == 4 and stats.verdict is Verdict.FAIL
    assert next(r for r in stats.rules if r.rule == "artifact_bytes").reasons == ["artifact 17,000,000 bytes > 16,000,000"]


def test_a_group_with_nothing_counted() -> None:
    stats = aggregate([SeedRow(run_id=1, seed=1, status="FAILED"), SeedRow(run_id=2, seed=2, status="QUEUED")])
    assert stats.n == 0 and stats.best is None and stats.worst is None
    assert stats.val_bpb.mean is None and stats.val_bpb.std is None
    assert stats.mean_artifact_bytes is None and stats.max_artifact_bytes is None
    assert stats.verdict is Verdict.NOT_COMPARABLE
    assert [e.reason for e in stats.excluded] == ["failed; not counted", "queued; not counted until it succeeds"]


def test_one_seed_has_a_mean_and_no_std() -> None:
    stats = aggregate([ok(1, 1, 1.2, 2.0, 100)])
    assert (stats.n, stats.val_bpb.mean, stats.val_bpb.std) == (1, 1.2, None)
    assert stats.best is stats.worst


def test_ties_in_val_bpb_order_by_seed() -> None:
    stats = aggregate([ok(1, 5, 1.2, 2.0, 1), ok(2, 3, 1.2, 2.0, 1)])
    assert (stats.best.seed, stats.worst.seed) == (3, 5)


# --- config_diff ----------------------------------------------------------------------------
def test_config_diff_is_one_line_in_sorted_order() -> None:
    assert config_diff({"XSA_LAST_N": 11, "BIGRAM_VOCAB_SIZE": 3072}) == "BIGRAM_VOCAB_SIZE=3072 XSA_LAST_N=11"


def test_config_diff_of_the_default_stack() -> None:
    assert config_diff({}) == "default stack"


def test_config_diff_shows_values_as_the_env_would() -> None:
    assert config_diff({"TTT_ENABLED": True, "TIE_EMBEDDINGS": False, "MATRIX_LR": 0.025, "WARMDOWN_ITERS": 3500.0, "NAME": "x"}) == (
        "MATRIX_LR=0.025 NAME=x TIE_EMBEDDINGS=0 TTT_ENABLED=1 WARMDOWN_ITERS=3500"
    )


# --- eligibility ------------------------------------------------------------------------------
def _stats(rows: list[SeedRow] | None = None):  # noqa: ANN202
    return aggregate(rows if rows is not None else [ok(i, i, 1.10, 1.860 + 0.001 * (i % 2), 15_000_000) for i in range(1, 4)])


BASELINE_LOSSES = [1.900, 1.901, 1.899]


def test_eligible_when_significant_and_every_check_passes() -> None:
    stats = _stats()
    comp = compare([r.val_loss for r in stats.counted], BASELINE_LOSSES)
    assert comp.significant
    e = eligibility(stats, comp, allow_noncompliant=False)
    assert e.eligible and e.reasons == ()


def test_not_eligible_reasons_one_line_each() -> None:
    stats = _stats()
    comp = compare([r.val_loss for r in stats.counted], BASELINE_LOSSES)
    e = eligibility(stats, comp, allow_noncompliant=True)
    assert not e.eligible and e.reasons == ("the spec set allow_noncompliant",)
    e = eligibility(stats, None, allow_noncompliant=False)
    assert e.reasons == ("no baseline group to compare against",)


def test_not_eligible_when_not_significant_says_the_comparisons_message() -> None:
    stats = _stats()
    comp = compare([r.val_loss for r in stats.counted], [1.862, 1.863, 1.861])  # no 0.005 nats better
    e = eligibility(stats, comp, allow_noncompliant=False)
    assert not e.eligible and e.reasons == (comp.message,) and "margin" in comp.message
    one = compare([1.86], BASELINE_LOSSES)
    assert eligibility(stats, one, False).reasons[0].startswith("not enough seeds")


def test_not_eligible_with_failed_or_incomparable_checks_naming_the_rules() -> None:
    comp = compare([1.860, 1.861, 1.860], BASELINE_LOSSES)
    failed = _stats([ok(i, i, 1.1, 1.86, 1, checks=TOO_BIG) for i in range(3)])
    assert eligibility(failed, comp, False).reasons == ("checks failed: artifact_bytes",)
    h100x1 = tuple(check_run(RunFacts(track="10min_16mb", hardware="H100:1", artifact_bytes=1, train_seconds=1.0, eval_seconds=1.0,
                                      val_tokens_scored=1, val_tokens_total=1, ttt_protocol="none", train_shards=("t",),
                                      train_fingerprints=("a",), val_fingerprints=("b",), code_sha256="r",
                                      gpu_name="NVIDIA H100 80GB HBM3", world_size=1)))
    unsure = _stats([ok(i, i, 1.1, 1.86, 1, checks=h100x1) for i in range(3)])
    assert eligibility(unsure, comp, False).reasons == ("checks not comparable: train_time, eval_time",)


def test_not_eligible_with_no_run_and_every_reason_listed() -> None:
    empty = _stats([SeedRow(run_id=1, seed=1, status="FAILED")])
    e = eligibility(empty, None, allow_noncompliant=True)
    assert e.reasons == ("the spec set allow_noncompliant", "no run has succeeded yet", "no baseline group to compare against")
