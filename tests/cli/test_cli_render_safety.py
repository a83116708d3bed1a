"""What the CLI prints of a run: terminal escapes in stored text are shown, not
obeyed, and `attempts` counts the times the run was launched."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import update

from cli.render import attempts_text, escape
from service.core.db import get_sessionmaker
from service.core.models import Run, RunEvent
from service.core.status import RunStatus
from service.runs.lifecycle import transition
from service.runs.logs import append_log
from tests.cli.conftest import Caddie

ESC = "\x1b"


def _submit(caddie: Caddie, name: str = "plain") -> int:
    spec = {"name": name, "track": "10min_16mb", "hardware": "H100:8", "seeds": [1]}
    r = httpx.post(f"{caddie.url}/api/v1/runs", json=spec, headers={"Authorization": f"Bearer {caddie.token}"})
    assert r.status_code == 201, r.text
    return r.json()["runs"][0]["id"]


def _move(caddie: Caddie, run_id: int, *statuses: RunStatus) -> None:
    with get_sessionmaker(caddie.db_url)() as s:
        run = s.get_one(Run, run_id)
        for status in statuses:
            transition(s, run, status, actor="worker", reason=f"to {status.value}")
        s.commit()


@pytest.fixture(scope="module")
def hostile_run(caddie: Caddie) -> int:
    """A run whose stored text holds terminal escapes (written before caddie refused
    them in names and notes, or by a worker quoting a trainer's coloured output)."""
    run_id = _submit(caddie)
    _move(caddie, run_id, RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.FAILED)
    with get_sessionmaker(caddie.db_url)() as s:
        s.execute(update(Run).where(Run.id == run_id).values(
            name=f"{ESC}[31mred[/] name", notes=f"line one\n{ESC}[2J\tafter clear\u202e", status_reason=f"{ESC}]8;;http://evil{ESC}\\link{ESC}]8;;{ESC}\\"))
        s.execute(update(RunEvent).where(RunEvent.run_id == run_id, RunEvent.to_status == "FAILED").values(reason=f"boom {ESC}[?1049h"))
        append_log(s, run_id, f"step:1 {ESC}[32mok{ESC}[0m\r\nbell\x07\n")
        s.commit()
    return run_id


def test_show_prints_escapes_as_text(caddie: Caddie, hostile_run: int) -> None:
    out = caddie.ok("show", str(hostile_run)).stdout
    assert ESC not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out and "\\x1b[31mred[/] name" in out and "\\u202e" in out
    assert "\\x1b]8;;http://evil" in out and "boom \\x1b[?1049h" in out
    # Notes keep their line breaks: "after clear" starts its own line.
    assert re.search(r"^.*\\x1b\[2J\s+after clear", out, re.M), out


def test_lists_and_logs_print_escapes_as_text(caddie: Caddie, hostile_run: int) -> None:
    listing = caddie.ok("runs").stdout
    assert ESC not in listing and "\\x1b[31mred" in listing
    log = caddie.ok("logs", str(hostile_run)).stdout
    assert log == "step:1 \\x1b[32mok\\x1b[0m\\x0d\nbell\\x07\n"
    # --raw is for a file: the bytes as the trainer wrote them.
    assert caddie.ok("logs", str(hostile_run), "--raw").stdout_bytes == f"step:1 {ESC}[32mok{ESC}[0m\r\nbell\x07\n".encode()


def test_escape_for_markup_and_terminal() -> None:
    assert escape(f"[bold]{ESC}[2J\x9b\u202e") == "\\[bold]\\x1b[2J\\x9b\\u202e"
    assert escape("a\n\tb", keep="\n\t") == "a\n\tb" and escape("a\nb") == "a\\x0ab"
    assert escape("plain ünïcode → ok") == "plain ünïcode → ok"


def test_attempts_count_launches() -> None:
    queued = {"to_status": "QUEUED"}
    launched = {"to_status": "PROVISIONING"}
    assert attempts_text({"attempts": 0}, [queued]) == "0"
    assert attempts_text({"attempts": 0}, [queued, launched, {"to_status": "RUNNING"}, {"to_status": "SUCCEEDED"}]) == "1"
    assert attempts_text({"attempts": 1}, [queued, launched, queued, launched]) == "2 (requeued 1 time)"
    assert attempts_text({"attempts": 2}, [queued, launched, queued, launched, queued]) == "2 (requeued 2 times)"


def test_show_says_attempt_1_for_a_run_that_ran_once(caddie: Caddie) -> None:
    once = _submit(caddie, "once")
    _move(caddie, once, RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.SUCCEEDED)
    assert re.search(r"attempts\s+1\s", caddie.ok("show", str(once)).stdout)
    twice = _submit(caddie, "twice")
    _move(caddie, twice, RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.PROVISIONING, RunStatus.RUNNING)
    assert re.search(r"attempts\s+2 \(requeued 1 time\)", caddie.ok("show", str(twice)).stdout)
    never = _submit(caddie, "never")
    assert re.search(r"attempts\s+0\s", caddie.ok("show", str(never)).stdout)


def test_show_lists_each_attempt_of_a_relaunched_run(caddie: Caddie) -> None:
    twice = _submit(caddie, "relaunched")
    _move(caddie, twice, RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.PROVISIONING, RunStatus.RUNNING)
    out = caddie.ok("show", str(twice)).stdout
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in out.splitlines() if re.match(r"│ [12] │", line)]
    assert [(r[0], r[4]) for r in rows] == [("1", "requeued"), ("2", "running")], out  # how each ended (the second still going)
    once = _submit(caddie, "ran-once")
    _move(caddie, once, RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.SUCCEEDED)
    assert "GPU-hours" not in caddie.ok("show", str(once)).stdout  # one attempt: no table
