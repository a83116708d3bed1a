"""Pure pieces of the executor: log cutting and decoding, the trainer's environment."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trainer.config import ConfigError
from worker.executor import MAX_PENDING_LINE_BYTES, complete_part, decode_log, job_env


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


def test_job_env_is_the_runs_knobs_seed_and_default_data_paths() -> None:
    settings = SimpleNamespace(data_path="/data/smoke", tokenizer_path="/data/tok.model")
    run = SimpleNamespace(spec={"NUM_LAYERS": 5, "TTT_ENABLED": False}, seed=42)
    env = job_env(run, settings)
    assert env == {"NUM_LAYERS": "5", "TTT_ENABLED": "0", "SEED": "42", "DATA_PATH": "/data/smoke", "TOKENIZER_PATH": "/data/tok.model"}
    own = SimpleNamespace(spec={"DATA_PATH": "/mine"}, seed=1)
    assert job_env(own, settings)["DATA_PATH"] == "/mine"
    with pytest.raises(ConfigError):
        job_env(SimpleNamespace(spec={"NUM_LAYERS": -1}, seed=1), settings)
