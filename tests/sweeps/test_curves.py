"""The records the sweep pruner's predictor is fitted on are found through the settings (CADDIE_RECORDS_DIR)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.settings import DEFAULT_RECORDS_DIR, Settings
from service.sweeps.curves import record_curves


def test_records_dir_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CADDIE_RECORDS_DIR", raising=False)
    assert Settings().records_dir == DEFAULT_RECORDS_DIR  # beside the checkout: ../shared/challenge/records/...
    monkeypatch.setenv("CADDIE_RECORDS_DIR", str(tmp_path / "records"))
    assert Settings().records_dir == tmp_path / "records"


def test_a_missing_records_dir_gives_no_curves(tmp_path: Path) -> None:
    assert record_curves(tmp_path / "absent") == ()
    (tmp_path / "empty").mkdir()
    assert record_curves(tmp_path / "empty") == ()
