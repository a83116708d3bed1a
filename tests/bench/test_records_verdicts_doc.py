"""bench/results/records_verdicts.md is what bench/records_verdicts.py writes today: the published verdicts
on the challenge's records drifted from the parser and the rules for several sessions before this test."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from bench import records_verdicts

REPO = Path(__file__).resolve().parents[2]
CHALLENGE = REPO / ".." / "shared" / "challenge"


@pytest.mark.skipif(not (CHALLENGE / "records").is_dir(), reason="the challenge's records are not at ../shared/challenge")
def test_the_published_verdicts_are_todays() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        records_verdicts.main(CHALLENGE)
    published = (REPO / "bench" / "results" / "records_verdicts.md").read_text()
    assert out.getvalue() == published, "regenerate: .venv/bin/python bench/records_verdicts.py ../shared/challenge > bench/results/records_verdicts.md"
