"""bench/_fault_hooks.py patches the executor's launch record; it must keep passing what the executor passes."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from bench import _fault_hooks
from worker.run import executor


def test_the_armed_hook_passes_every_keyword_of_the_executor_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def recording(self: Any, handle: Any, reason: str, **kw: Any) -> bool:
        seen.append(kw)
        return True

    keywords = [p.name for p in inspect.signature(executor.RunDriver._to_running).parameters.values() if p.kind is p.KEYWORD_ONLY]
    monkeypatch.setattr(executor.RunDriver, "_to_running", recording)
    _fault_hooks.arm(tmp_path)  # no marker file: the hook only passes through
    given = {name: object() for name in keywords}
    assert executor.RunDriver._to_running(object(), "handle", "why", **given) is True
    assert seen == [given]
    assert "environment" in keywords  # the keyword the old hook refused
