"""The log formats of the challenge's records from 2026-04 on read as their maintainers read them."""

from __future__ import annotations

from service.runs.logparse import parse_script_log, script_result

PHASED = """\
1776143300.001 1/20000 train_loss: 9.0017 train_time: 0.0m tok/s: 12000000
1776143353.675 4860/20000 val_loss: 2.7724 val_bpb: 1.0733
1776143353.700 stopping_early: wallclock_cap train_time: 590009ms step: 4860/20000
1776143360.163 diagnostic pre-quantization post-ema val_loss:2.77124802 val_bpb:1.07280189 eval_time:6448ms
1776143361.245 Code size (uncompressed): 139831 bytes
1776143361.245 Code size (compressed): 28599 bytes
1776143448.905 Total submission size quantized+brotli: 15988805 bytes
1776143508.229 diagnostic quantized val_loss:2.80433049 val_bpb:1.08560874 eval_time:56835ms
1776144163.319 quantized_ttt_phased val_loss:2.77232000 val_bpb:1.07325147 eval_time:504949ms
"""


def test_timestamped_phased_ttt_log() -> None:
    points, s = parse_script_log(PHASED)
    r = script_result(s)
    assert r.problem is None
    assert (r.values["val_bpb"], r.values["val_loss"]) == (1.07325147, 2.77232)
    assert r.values["pre_ttt_bpb"] == 1.08560874  # the quantized model before TTT
    assert r.sources["pre_ttt_bpb"]["line_no"] == 8
    assert r.values["code_bytes"] == 28599 and r.sources["code_bytes"]["line_no"] == 6
    assert r.values["artifact_bytes"] == 15988805
    assert r.values["train_seconds"] == 590.009 and r.sources["train_seconds"]["line_no"] == 3
    assert r.values["steps"] == 4860
    assert [(p.kind, p.step) for p in points] == [("train", 1), ("val", 4860)]


def test_score_labels_of_the_frontier() -> None:
    for label in ("quantized_ttt_phased", "quantized_sliding_window", "quantized_ttt_lora", "quantized_ttt"):
        _, s = parse_script_log(f"final_int6_roundtrip_exact val_loss:2.9 val_bpb:1.2\n{label} val_loss:2.5 val_bpb:1.08 eval_time:1000ms\n")
        assert s.final is not None and (s.final.label, s.final.val_bpb) == (label, 1.08)


def test_a_pair_between_label_and_value_and_a_later_ttt_over_an_earlier_exact() -> None:
    _, s = parse_script_log(
        "final_int8_zlib_roundtrip_exact val_loss:2.0 val_bpb:1.19\n"
        "final_sliding_window_eval_exact stride:64 val_loss:1.90 val_bpb:1.125\n"
        "legal_ttt val_loss:1.88 val_bpb:1.119 eval_time:300000ms\n"
    )
    assert s.final is not None and s.final.val_bpb == 1.119
    assert s.pre_ttt is not None and s.pre_ttt.val_bpb == 1.125


def test_a_failed_ttt_attempt_at_the_end_leaves_the_score_before_it() -> None:
    _, s = parse_script_log(
        "final_int6_sliding_window val_loss:2.50771838 val_bpb:1.08982552 eval_time:76573ms\n"
        "final_int6_ttt val_loss:3.07421378 val_bpb:1.33603200 eval_time:405410ms\n"
    )
    assert s.final is not None and s.final.label == "final_int6_sliding_window"
    _, s = parse_script_log("final_sliding_window_exact val_loss:1.9 val_bpb:1.12\nlegal_ttt_exact val_loss:nan val_bpb:nan\n")
    assert s.final is not None and s.final.val_bpb == 1.12


def test_train_time_in_minutes_and_a_bare_step_line() -> None:
    points, s = parse_script_log("5962/20000 train_loss: 2.7 train_time: 9.8m tok/s: 8000000\n")
    assert s.steps is not None and s.steps.value == 5962
    assert s.train_seconds == 588.0
    assert points[0].step == 5962 and points[0].train_loss == 2.7


def test_a_spec_names_its_score_line_and_an_unknown_format_says_what_it_saw() -> None:
    _, s = parse_script_log("my eval val_loss:2.0 val_bpb:1.2\nsanity val_loss:2.1 val_bpb:1.3\n")
    unknown = script_result(s)
    assert unknown.problem is not None and "line 1: my eval val_loss:2.0 val_bpb:1.2" in unknown.problem
    named = script_result(s, score_label=r"my eval")
    assert named.problem is None and named.values["val_bpb"] == 1.2 and named.sources["val_bpb"]["line_no"] == 1
    missing = script_result(s, score_label=r"other")
    assert missing.problem is not None and "'other'" in missing.problem and "sanity" in missing.problem


def test_the_spec_s_score_label_reaches_the_run_s_outcome() -> None:
    from worker.run.script_job import script_outcome

    _, s = parse_script_log("my eval val_loss:2.0 val_bpb:1.2\n")
    spec = {"script": "ab" * 32, "data": "sp1024", "env": {}, "files": {}}
    assert script_outcome(s, spec)["result"]["status"] == "failed"
    done = script_outcome(s, {**spec, "score_label": "my eval"})
    assert done["result"]["status"] == "succeeded" and done["val_bpb"] == 1.2
