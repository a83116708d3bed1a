"""`caddie groups / group / compare / leaderboard / publish` against the real API
on SQLite: two configs over seeds, results written as the worker writes them."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select

from service.core.db import get_sessionmaker
from service.core.models import Run
from service.results.queries import judge_run
from tests.cli.conftest import Caddie

RESULT = {"val_tokens_scored": 62_021_631, "val_tokens_total": 62_021_631, "ttt_protocol": "score_first",
          "train_shards": ["fineweb_train_000000.bin"], "val_shards": ["fineweb_val_000000.bin"], "trainer_revision": "0123abc",
          "code_sha256": "ab" * 32, "code_dirty": False, "train_fingerprints": ["a" * 64], "val_fingerprints": ["b" * 64],
          "gpu_name": "NVIDIA H100 80GB HBM3", "world_size": 8}


def _spec(tmp_path: Path, name: str, config: str, seeds: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ntrack: 10min_16mb\nhardware: H100:8\nconfig: {config}\nseeds: [{seeds}]\n")
    return path


def _finish(c: Caddie, losses: dict[str, list[float | None]]) -> None:
    """Mark the runs done the way the executor does: figures, result.json, checks."""
    with get_sessionmaker(c.db_url)() as s:
        for run in s.scalars(select(Run).where(Run.name.in_(list(losses))).order_by(Run.id)):
            loss = losses[run.name][sorted(r.seed for r in s.scalars(select(Run).where(Run.group_key == run.group_key))).index(run.seed)]
            if loss is None:
                run.status, run.status_reason = "CANCELLED", "cancelled by user"
                continue
            run.status, run.val_loss, run.val_bpb = "SUCCEEDED", loss, loss / 1.6893
            run.artifact_bytes, run.train_seconds, run.eval_seconds, run.result = 15_950_000, 599.5, 531.0, dict(RESULT)
            judge_run(run)
        s.commit()


def _key(c: Caddie, name: str) -> str:
    with get_sessionmaker(c.db_url)() as s:
        return s.scalar(select(Run.group_key).where(Run.name == name))


def test_groups_compare_leaderboard_publish(caddie: Caddie, tmp_path: Path) -> None:
    c = caddie
    c.ok("submit", str(_spec(tmp_path, "cli-base", "{}", "1, 2, 3")))
    # the default stack (2026-04-27's, a config naming no STACK) against it with its loops run once more
    c.ok("submit", str(_spec(tmp_path, "cli-loops3", "{NUM_LOOPS: 3}", "1, 2, 3, 4")))
    _finish(c, {"cli-base": [1.8900, 1.8906, 1.8896], "cli-loops3": [1.8830, 1.8836, 1.8827, None]})
    base, cand = _key(c, "cli-base"), _key(c, "cli-loops3")

    listing = c.ok("groups", "--track", "10min_16mb").stdout
    assert "cli-loops3" in listing and "NUM_LOOPS=3" in listing and "3 (+1)" in listing and "default stack" in listing

    detail = c.ok("group", cand[:8]).stdout
    assert "3 counted of 4 runs" in detail and "CANCELLED" in detail and "not counted" in detail
    for rule in ("artifact_bytes", "train_time", "eval_time", "full_val", "ttt_protocol", "no_val_in_train", "code_revision"):
        assert rule in detail
    assert "record-eligible" in detail and "not record-eligible" not in detail

    compared = c.ok("compare", cand[:8], base[:8]).stdout
    p = float(re.search(r"p \(one-sided\)\s+([0-9.e-]+)", compared).group(1))
    assert 0 < p < 0.01 and "95% CI" in compared and "significant" in compared
    # The other way round no margin is beaten: not significant.
    assert "no number of seeds" in c.ok("compare", base[:8], cand[:8]).stdout

    board = c.ok("leaderboard", "--track", "10min_16mb").stdout
    assert board.index("cli-loops3") < board.index("cli-base")

    assert "published" in c.ok("publish", cand[:8]).stdout
    assert "private to" in c.ok("publish", cand[:8], "--undo").stdout
    assert "prefix" in c.fails("group", "abc")
    assert "not found" in c.fails("group", "f" * 64)


CHALLENGE = Path(__file__).resolve().parents[2] / ".." / "shared" / "challenge"
FRONTIER = "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"


def test_records_import_then_the_frontier_is_the_default_baseline(caddie: Caddie, tmp_path: Path) -> None:
    """The challenge's 46 records imported; the leaderboard shows them beside team groups, marked;
    a group's default baseline is the track's best public record; compare GROUP record:<folder> works."""
    c = caddie
    said = c.ok("records", "import", str(CHALLENGE)).stdout
    assert "46 public records" in said and "46 new" in said
    assert "0 new, 46 updated" in c.ok("records", "import", str(CHALLENGE)).stdout  # idempotent

    c.ok("submit", str(_spec(tmp_path, "cli-rec", "{XSA_LAST_N: 9}", "1, 2, 3")))
    _finish(c, {"cli-rec": [1.8900, 1.8906, 1.8896]})
    key = _key(c, "cli-rec")
    board = c.ok("leaderboard", "--track", "10min_16mb", "--limit", "100").stdout
    assert "public record" in board and "cli-rec" in board
    assert board.index("LQER") < board.index("cli-rec")  # 1.061 bpb ranks above the team's 1.119

    detail = c.ok("group", key[:8]).stdout
    assert "LQER" in detail and "public record" in detail  # the default baseline: the frontier
    compared = c.ok("compare", key[:8], f"record:{FRONTIER}").stdout
    assert "nats per byte" in compared and "readme" in compared and "no number of seeds" in compared
    maint = c.ok("compare", key[:8], "record:2026-03-17_NaiveBaseline", "--policy", "maintainers").stdout
    assert "maintainers" in maint and "p < 0.25" in maint
    assert "not found" in c.fails("compare", key[:8], "record:no-such-folder")
    assert "not record-eligible" in c.ok("group", key[:8]).stdout  # 1.119 bpb does not beat the 1.061 frontier
