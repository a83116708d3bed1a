"""`caddie cancel` says what the cancel came to (issue 21 item 6): cancelled at once, or
requested while the run is active (the worker stops it), or already finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import main as cli_main
from service.core.db import get_sessionmaker
from service.core.models import Run
from service.core.status import RunStatus
from service.runs.lifecycle import transition
from tests.cli.conftest import Caddie
from tests.cli.test_cli_flow import submitted_ids


def test_cancel_says_what_happened(caddie: Caddie, spec_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queued, active = submitted_ids(caddie.ok("submit", str(spec_file), "--seeds", "1,2").stdout)
    out = caddie.ok("cancel", str(queued)).stdout
    assert f"run {queued}: CANCELLED: run {queued} is cancelled" in out
    assert caddie.fails("cancel", str(queued)) == f"run {queued} is already CANCELLED"
    with get_sessionmaker(caddie.db_url)() as s:
        run = s.get_one(Run, active)
        transition(s, run, RunStatus.PROVISIONING, actor="scheduler")
        transition(s, run, RunStatus.RUNNING, actor="worker")
        s.commit()
    monkeypatch.setattr(cli_main, "CANCEL_WAIT_S", 0.2)  # no worker here: nobody stops it
    out = " ".join(caddie.ok("cancel", str(active)).stdout.split())
    assert f"run {active}: RUNNING: cancel requested while RUNNING: the worker stops the job" in out
