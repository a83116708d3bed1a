"""`caddie export GROUP --out DIR` against the real API (SQLite): the folder on disk, file by file;
no overwrite without --force; one-line errors, the override's among them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from service.core.db import get_sessionmaker
from service.core.models import Team, User
from service.core.settings import Settings
from service.core.storage import LocalArtifactStore
from tests.cli.conftest import Caddie
from tests.export_world import BASELINE_SEEDS, GOOD_SEEDS, TRAINER, Seed, log_bytes, make_group

FOLDER = Path("records/track_10min_16mb/2026-03-23_XSA_everywhere")


@pytest.fixture(scope="module")
def groups(caddie: Caddie, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Groups of the caddie's team, made in its database with their files in its artifact store.
    "too_big" has the best mean, so it is the team's leader: exports of "good" name their baseline."""
    store = LocalArtifactStore(Settings(home=caddie.home, database_url=caddie.db_url).artifact_dir)
    tmp = tmp_path_factory.mktemp("outputs")
    with get_sessionmaker(caddie.db_url)() as s:
        team_id = s.scalar(select(Team.id).where(Team.name == "golfers"))
        user_id = s.scalar(select(User.id).where(User.name == "ann"))

        def make(name: str, seeds: list[Seed], config: dict) -> str:
            return make_group(s, store, tmp / name, team_id=team_id, user_id=user_id, name=name, config=config, seeds=seeds)

        return {
            "baseline": make("baseline", BASELINE_SEEDS, {"XSA_LAST_N": 3}),
            "good": make("XSA everywhere", GOOD_SEEDS, {"XSA_LAST_N": 11}),
            "too_big": make("too big", [Seed(1, 1.89, 1.12), Seed(2, 1.8905, 1.1201, artifact_bytes=16_000_001)], {"XSA_LAST_N": 10}),
        }


def test_export_writes_the_records_folder(caddie: Caddie, groups: dict[str, str], tmp_path: Path) -> None:
    out = caddie.ok("export", groups["good"][:10], "--out", str(tmp_path), "--github-id", "ann-gh", "--baseline", groups["baseline"]).stdout
    folder = tmp_path / FOLDER
    assert f"wrote {folder}" in out
    names = ["README.md", "submission.json", "train_seed1337.log", "train_seed42.log", "train_seed2025.log", "train_gpt.py", "requirements.txt"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    for name in names:
        assert f"{(folder / name).stat().st_size:,} bytes" in out and name in out
    for seed in (1337, 42, 2025):
        assert (folder / f"train_seed{seed}.log").read_bytes() == log_bytes(seed)
    assert (folder / "train_gpt.py").read_bytes() == TRAINER
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["seeds"] == [1337, 42, 2025] and sub["github_id"] == "ann-gh" and sub["p_value"] < 0.01
    assert sub["baseline"]["group_key"] == groups["baseline"]


def test_an_existing_folder_is_kept_unless_force(caddie: Caddie, groups: dict[str, str], tmp_path: Path) -> None:
    good = ("export", groups["good"], "--out", str(tmp_path), "--baseline", groups["baseline"])
    caddie.ok(*good)
    readme = tmp_path / FOLDER / "README.md"
    readme.write_text("edited by hand")
    msg = caddie.fails(*good)
    assert msg == f"{tmp_path / FOLDER} already exists and is not empty; pass --force to overwrite its files"
    assert readme.read_text() == "edited by hand"
    caddie.ok(*good, "--force")
    assert readme.read_text().startswith("# XSA everywhere")


def test_a_failed_check_needs_override(caddie: Caddie, groups: dict[str, str], tmp_path: Path) -> None:
    msg = caddie.fails("export", groups["too_big"], "--out", str(tmp_path))
    assert "artifact_bytes fail" in msg and '--override "reason"' in msg
    assert not (tmp_path / "records").exists()
    caddie.ok("export", groups["too_big"], "--out", str(tmp_path), "--override", "1 byte over; fixed in the next run")
    folder = tmp_path / "records/track_10min_16mb/2026-03-23_too_big"
    assert json.loads((folder / "submission.json").read_text())["override_reason"] == "1 byte over; fixed in the next run"
    assert "> Override reason: 1 byte over; fixed in the next run" in (folder / "README.md").read_text()


def test_errors_are_one_line(caddie: Caddie, groups: dict[str, str], tmp_path: Path) -> None:
    assert caddie.fails("export", "f" * 64, "--out", str(tmp_path)) == f"group {'f' * 64} not found"
    assert caddie.fails("export", groups["too_big"], "--override", "two\nlines").startswith("invalid request: override: ")
    assert caddie.fails("export", groups["good"], "--github-id", "-bad-").startswith("invalid request: github_id: ")
