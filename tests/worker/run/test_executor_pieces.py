"""Pure pieces of the executor (worker.run.log_stream, worker.run.trainer_job): log cutting and decoding, the trainer's knobs and data variant."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trainer.config import ConfigError
from worker.run.log_stream import MAX_PENDING_LINE_BYTES, complete_part, decode_log
from worker.run.trainer_job import data_variant, job_env


def test_only_whole_lines_are_stored_while_the_job_runs() -> None:
    assert complete_part(b"step:1\nstep:2\nste", final=False) == len(b"step:1\nstep:2\n")
    assert complete_part(b"no newline yet", final=False) == 0
    assert complete_part(b"no newline yet", final=True) == len(b"no newline yet")


def test_an_overlong_line_is_cut_on_a_character_boundary() -> None:
    data = b"x" * (MAX_PENDING_LINE_BYTES - 1) + "é".encode()  # 2-byte character at the end
    cut = complete_part(data, final=False)
    assert cut == MAX_PENDING_LINE_BYTES - 1
    data[:cut].decode("utf-8")  # strict: no split character


def test_decoding_keeps_the_byte_length() -> None:
    raw = b"ok \xff\xfe bad \x00 nul " + "é".encode() + b"\xc3"
    text = decode_log(raw)
    assert len(text.encode("utf-8")) == len(raw)
    assert "\x00" not in text and "é" in text


def test_job_env_is_the_runs_knobs_and_seed_and_the_data_variant_follows_the_vocabulary() -> None:
    run = SimpleNamespace(spec={"STACK": "2026-03-23", "NUM_LAYERS": 5, "TTT_ENABLED": False}, seed=42)
    assert job_env(run) == {"STACK": "2026-03-23", "NUM_LAYERS": "5", "TTT_ENABLED": "0", "SEED": "42"}
    assert data_variant(run) == "sp1024"
    assert data_variant(SimpleNamespace(spec={"VOCAB_SIZE": 4096}, seed=1)) == "sp4096"
    # a spec that names no STACK is the default stack's (2026-04-27, SP8192): its env names none either
    assert data_variant(SimpleNamespace(spec={}, seed=1)) == "sp8192"
    assert data_variant(SimpleNamespace(spec={"CASEOPS_ENABLED": True}, seed=1)) == "sp8192_caseops"
    assert job_env(SimpleNamespace(spec={"NUM_LAYERS": 11}, seed=1)) == {"SEED": "1"}
    with pytest.raises(ConfigError):
        job_env(SimpleNamespace(spec={"NUM_LAYERS": -1}, seed=1))
