"""The script log reading (service/runs/logparse.py) on the public record's own log, whose
figures must equal its README and submission.json, and on truncated, interleaved
and garbage logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from service.runs.logparse import ScriptLogParser, parse_script_log, script_result

RECORD = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"

TINY_LOG = """\
W1123 torch/distributed/run.py:803] Setting OMP_NUM_THREADS environment variable
step:0/4 val_loss:6.9000 val_bpb:4.1000 train_time:0ms step_avg:0.01ms
step:1/4 train_loss:6.9322 train_time:133ms step_avg:132.54ms
step:2/4 train_loss:5.1000 train_time:266ms step_avg:133.00ms
step:4/4 val_loss:3.0000 val_bpb:1.8000 train_time:532ms step_avg:133.00ms
peak memory allocated: 210 MiB reserved: 220 MiB
Serialized model int8+zlib: 12000 bytes
Code size: 3000 bytes
Total submission size int8+zlib: 15000 bytes
final_int8_zlib_roundtrip val_loss:3.0100 val_bpb:1.8100 eval_time:1500ms
final_int8_zlib_roundtrip_exact val_loss:3.01000000 val_bpb:1.81000000
"""


def record_file(name: str) -> Path:
    path = RECORD / name
    if not path.exists():
        pytest.skip(f"the public record is not at {RECORD} (../shared/reference beside the repository)")
    return path


def readme_row(seed: str) -> list[str]:
    """The README results table's cells for one seed: | Seed | step_avg | steps | Pre-TTT | Post-TTT | gain | TTT time | Artifact |"""
    for line in record_file("README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == seed:
            return cells
    raise AssertionError(f"no row for seed {seed} in the README")


def test_the_records_log_gives_the_figures_its_readme_and_submission_json_state() -> None:
    points, summary = parse_script_log(record_file("train_seed1337.log").read_text(encoding="utf-8"))
    result = script_result(summary)
    assert result.problem is None
    v = result.values
    _, _, steps, pre_ttt, post_ttt, _, ttt_time, artifact = readme_row("1337")
    assert f"{v['val_bpb']:.4f}" == post_ttt == "1.1192"
    assert f"{v['pre_ttt_bpb']:.4f}" == pre_ttt
    assert v["steps"] == int(steps.replace(",", ""))
    assert v["artifact_bytes"] == int(artifact.replace(",", ""))
    assert v["val_loss"] == pytest.approx(1.88976776) and v["val_bpb"] == pytest.approx(1.11922988)
    # Code size is the script's own bytes.
    assert v["code_bytes"] == len(record_file("train_gpt.py").read_bytes())
    # The TTT evaluation is one of the eval lines; training stopped at the wallclock cap.
    assert f"{410268 / 1000:.0f}s" == ttt_time and any(s["value"] == 410268 for s in result.sources["eval_seconds"])
    assert v["train_seconds"] == pytest.approx(600.128) and v["eval_seconds"] < 600
    # submission.json: its val_bpb is the 3-seed mean of the README's table, its bytes_total the largest artifact.
    sub = json.loads(record_file("submission.json").read_text(encoding="utf-8"))
    seeds = ("1337", "42", "2025")
    assert f"{sum(float(readme_row(s)[4]) for s in seeds) / 3:.4f}" == f"{sub['val_bpb']:.4f}"
    assert sub["bytes_total"] == max(int(readme_row(s)[7].replace(",", "")) for s in seeds) >= v["artifact_bytes"]
    # Every result says where it came from.
    assert result.sources["val_bpb"]["line"] == "legal_ttt_exact val_loss:1.88976776 val_bpb:1.11922988"
    assert result.sources["artifact_bytes"]["line"] == "Total submission size int6+lzma: 15977386 bytes"
    lines = record_file("train_seed1337.log").read_text(encoding="utf-8").splitlines()
    assert lines[result.sources["val_bpb"]["line_no"] - 1].strip() == result.sources["val_bpb"]["line"]
    # Live points: every step line, validation included.
    assert [p.step for p in points if p.kind == "val"][-1] == 7179
    assert sum(1 for line in lines if re.match(r"^step:\d+/\d+ (train|val)_loss", line)) == len(points)


def test_a_small_log_in_the_conventions() -> None:
    points, summary = parse_script_log(TINY_LOG)
    r = script_result(summary)
    assert [(p.kind, p.step, p.elapsed_ms) for p in points] == [("val", 0, 0), ("train", 1, 133), ("train", 2, 266), ("val", 4, 532)]
    assert r.values == {"val_bpb": 1.81, "val_loss": 3.01, "artifact_bytes": 15000, "code_bytes": 3000, "model_bytes": 12000,
                        "steps": 4, "peak_memory_mib": 210.0, "train_seconds": 0.532, "eval_seconds": 1.5}


def test_a_records_own_final_label_counts_when_no_exact_line_is_printed() -> None:
    r = script_result(parse_script_log("final_int8_zlib_roundtrip val_loss:2.5 val_bpb:1.5 eval_time:10ms\n")[1])
    assert r.problem is None and r.values["val_bpb"] == 1.5


def test_no_final_figure_is_a_problem_and_nan_is_no_figure() -> None:
    assert "no final figure" in script_result(parse_script_log(TINY_LOG.rsplit("final_int8", 2)[0])[1]).problem
    nan = script_result(parse_script_log("final_exact val_loss:nan val_bpb:nan\n")[1])
    assert "not a finite number" in nan.problem and "val_bpb" not in nan.values
    # A DIAGNOSTIC line is an evaluation, not a final.
    assert script_result(parse_script_log("DIAGNOSTIC post_ema val_loss:1.9 val_bpb:1.1 eval_time:5ms\n")[1]).problem


def test_launcher_prefixes_and_indentation_are_read_through() -> None:
    _, summary = parse_script_log("[rank0]: legal_ttt_exact val_loss:1.5 val_bpb:0.9\n  Code size: 7 bytes\n")
    assert summary.final.val_bpb == 0.9 and summary.code_bytes.value == 7


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(TINY_LOG)), max_size=12))
def test_chunks_cut_anywhere_read_like_the_whole_log(cuts: list[int]) -> None:
    whole_points, whole = parse_script_log(TINY_LOG)
    parser = ScriptLogParser()
    points, last = [], 0
    for cut in sorted(cuts):
        points += parser.feed(TINY_LOG[last:cut])
        last = cut
    points += parser.feed(TINY_LOG[last:]) + parser.flush()
    assert points == whole_points and parser.summary == whole


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(TINY_LOG)))
def test_a_truncated_log_never_invents_a_figure(cut: int) -> None:
    """Cut anywhere: a figure is read only from a whole line (one cut inside a number would lie)."""
    text = TINY_LOG[:cut]
    r = script_result(parse_script_log(text)[1])
    for column, source in r.sources.items():
        for s in source if isinstance(source, list) else [source]:
            assert s["line"] + "\n" in text, column
    if r.problem is not None:
        assert "val_bpb" not in r.values
    else:
        assert r.values["val_bpb"] == 1.81 and r.values["val_loss"] == 3.01


GARBAGE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(noise=st.lists(GARBAGE, max_size=30), seed=st.randoms(use_true_random=False))
def test_garbage_and_other_ranks_lines_interleaved_change_nothing(noise: list[str], seed) -> None:
    """Lines that are not the conventions' (random text, a second rank's own lines,
    half lines glued together) between the real ones leave the figures as they were."""
    real = TINY_LOG.splitlines()
    other_rank = ["step:3/4 train_loss:9.9step:3/4 train_loss:9.8 train_time:1ms", "Traceback (most recent call last):",
                  "ttt_sliding:done val_loss=1.0 val_bpb=1.0 elapsed=1.0s", "warmup_step:1/20"]
    junk = [n.replace("\n", " ").replace("\r", " ") for n in noise + other_rank]
    junk = [j for j in junk if not _looks_like_a_convention(j)]
    mixed = list(real)
    for j in junk:
        mixed.insert(seed.randint(0, len(mixed)), j)
    _, expected = parse_script_log(TINY_LOG)
    _, got = parse_script_log("\n".join(mixed) + "\n")
    assert script_result(got).values == script_result(expected).values


def _looks_like_a_convention(line: str) -> bool:
    """Random text that happens to be a real line of the conventions is not noise."""
    _, s = parse_script_log(line + "\n")
    return bool(s.finals or s.eval_ms or s.steps or s.artifact_bytes or s.code_bytes or s.model_bytes or s.peak_memory_mib or s.train_ms)
