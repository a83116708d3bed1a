"""The trainer's log lines become metric points and summary facts, however the log is chunked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.runs.logparse import LogParser, MetricPoint, failure_reason, parse_text

LOG = """\
world_size:8 seed:1337
step:1/9000 train_loss:6.9312 train_time:83ms step_avg:83.00ms
step:2/9000 train_loss:8.6545 train_time:166ms step_avg:82.93ms
step:4000/9000 val_loss:2.0577 val_bpb:1.2187 train_time:333519ms step_avg:83.38ms
Traceback-looking noise: step:nope
stopping_early: wallclock_cap train_time:600128ms step:7179/9000
step:7179/9000 val_loss:1.9501 val_bpb:1.1550 train_time:600128ms step_avg:83.60ms
peak memory allocated: 21471 MiB reserved: 22002 MiB
Code size: 89458 bytes
Serialized model int6+zstd: 15887928 bytes
Total submission size int6+zstd: 15977386 bytes
final_int6_sliding_window_exact val_loss:1.89385556 val_bpb:1.12165091
final_ttt val_loss:1.88000000 val_bpb:1.11340000
"""


def test_whole_log_gives_points_and_summary() -> None:
    points, s = parse_text(LOG)
    assert points == [
        MetricPoint("train", 1, 83, train_loss=6.9312),
        MetricPoint("train", 2, 166, train_loss=8.6545),
        MetricPoint("val", 4000, 333519, val_loss=2.0577, val_bpb=1.2187),
        MetricPoint("val", 7179, 600128, val_loss=1.9501, val_bpb=1.1550),
    ]
    assert s.stopping_early == {"reason": "wallclock_cap", "train_time_ms": 600128, "step": 7179}
    assert (s.peak_memory_allocated_mib, s.peak_memory_reserved_mib) == (21471, 22002)
    assert (s.code_bytes, s.model_bytes) == (89458, 15887928)
    assert (s.total_bytes, s.total_bytes_format) == (15977386, "int6+zstd")
    assert s.finals["final_int6_sliding_window_exact"] == {"val_loss": 1.89385556, "val_bpb": 1.12165091}
    assert s.final == {"val_loss": 1.88, "val_bpb": 1.1134}  # TTT is the score that counts
    assert (s.total_steps, s.last_step) == (9000, 7179)


def test_final_without_ttt_is_the_sliding_window_line() -> None:
    _, s = parse_text(LOG.replace("final_ttt val_loss:1.88000000 val_bpb:1.11340000\n", ""))
    assert s.final == {"val_loss": 1.89385556, "val_bpb": 1.12165091}
    assert parse_text("")[1].final is None


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_any_chunking_gives_the_same_result(size: int) -> None:
    expected_points, expected_summary = parse_text(LOG)
    data = LOG.encode()
    parser = LogParser()
    points = []
    for i in range(0, len(data), size):
        points += parser.feed(data[i : i + size])
    points += parser.flush()
    assert points == expected_points
    assert parser.summary == expected_summary


def test_partial_last_line_waits_for_its_end_and_flush_parses_it() -> None:
    parser = LogParser()
    assert parser.feed("step:2/10 train_loss:1.5 train_ti") == []
    assert parser.feed("me:9ms step_avg:4.5ms") == []  # still no newline
    assert parser.flush() == [MetricPoint("train", 2, 9, train_loss=1.5)]


def test_multibyte_character_split_across_chunks_and_crlf() -> None:
    parser = LogParser()
    data = "note: caf\u00e9\r\nCode size: 12 bytes\r\n".encode()
    cut = data.index(b"\xa9")  # inside the two bytes of the accented e
    parser.feed(data[:cut])
    parser.feed(data[cut:])
    assert parser.summary.code_bytes == 12


def test_nan_loss_is_a_point_not_a_crash() -> None:
    points, _ = parse_text("step:5/10 train_loss:nan train_time:50ms step_avg:10.00ms\n")
    assert points[0].step == 5 and points[0].train_loss != points[0].train_loss


TORCHRUN_FAILURE = """\
rank0 alloc
Traceback (most recent call last):
  File "/w/trainer/train.py", line 4, in <module>
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
E1124 03:50:00 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) local_rank: 1
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
trainer FAILED
"""


def test_failure_reason_under_torchrun_is_the_rank_s_exception() -> None:
    assert failure_reason(TORCHRUN_FAILURE) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert failure_reason("loading\nerror: DATA_PATH=/x: no shards match\n") == "error: DATA_PATH=/x: no shards match"
    assert failure_reason("a\nlast words\n") == "last words"
    assert failure_reason("") == ""


def test_a_trainer_run_without_result_json_gets_its_columns_from_the_log() -> None:
    _, s = parse_text(LOG)
    assert s.columns() == {"val_bpb": 1.1134, "val_loss": 1.88, "artifact_bytes": 15977386, "code_bytes": 89458,
                           "steps": 7179, "peak_memory_mib": 21471}  # fmt: skip
    assert parse_text("world_size:8\n")[1].columns() == {}


def test_trainer_lines_behind_a_launcher_prefix_read_like_script_lines() -> None:
    """One reading of the conventions: torchrun's "[rank0]: " prefix and indentation are read through."""
    points, s = parse_text("[rank0]: step:3/9 train_loss:2.5 train_time:30ms\n  final_ttt val_loss:1.5 val_bpb:0.9\n")
    assert points == [MetricPoint("train", 3, 30, train_loss=2.5)]
    assert s.final == {"val_loss": 1.5, "val_bpb": 0.9} and s.last_step == 3


RECORD_0409 = Path(__file__).resolve().parents[3] / "shared/challenge/records/track_10min_16mb/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the record parses on Python 3.12")
@pytest.mark.skipif(not RECORD_0409.is_dir(), reason="the challenge's records are not at ../shared/challenge")
def test_a_2026_04_record_on_an_older_python_fails_saying_which_python_to_declare() -> None:
    # The record's own script, unchanged: its compressed code nests quotes in an f-string (Python 3.12).
    ran = subprocess.run([sys.executable, str(RECORD_0409 / "train_gpt.py")], capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 1
    reason = failure_reason(ran.stderr)
    assert reason.startswith("SyntaxError: f-string") and 'declare the run\'s environment.python, e.g. "3.12"' in reason
    assert failure_reason("ValueError: bad\n") == "ValueError: bad"  # other errors carry no hint
