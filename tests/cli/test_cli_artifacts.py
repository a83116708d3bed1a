"""`caddie artifacts` and `caddie download` against the real API and a real local artifact store,
on SQLite and PostgreSQL: identical bytes, sha256 checked, no half-written or silently replaced files,
and one-line errors."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.core.db import get_sessionmaker
from service.core.models import Artifact, utcnow
from service.core.storage import LocalArtifactStore
from tests.cli.conftest import Caddie, running_caddie

MODEL = hashlib.sha256(b"weights").digest() * (6 * 2**20 // 32 + 5)  # 6 MiB and 160 bytes: several chunks
LOG = b"step:1/2 train_loss:3.2\nstep:2/2 val_bpb:1.2345\n"
RESULT = b'{"val_bpb": 1.2345}\n'


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def caddie(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Caddie]:
    home = tmp_path_factory.mktemp("caddie-artifacts")
    suffix = uuid.uuid4().hex[:6]
    db_url = f"sqlite:///{home / 'caddie.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with running_caddie(db_url, home, f"golf-{suffix}", f"ann-{suffix}") as c:
        # A second team, to check that its member sees none of the first team's files.
        c.ok("admin", "create-team", f"rivals-{suffix}")
        c.ok("admin", "create-user", f"rex-{suffix}", "--team", f"rivals-{suffix}")
        c.rival_token = c.ok("admin", "create-token", f"rex-{suffix}").stdout.strip()  # type: ignore[attr-defined]
        yield c


def submit(c: Caddie) -> int:
    spec = {"name": "artifacts", "track": "10min_16mb", "hardware": "H100:8", "seeds": [7]}
    r = httpx.post(f"{c.url}/api/v1/runs", json=spec, headers={"Authorization": f"Bearer {c.token}"})
    assert r.status_code == 201, r.text
    return r.json()["runs"][0]["id"]


def store_path(c: Caddie, run_id: int, kind: str, name: str) -> Path:
    return c.home / "artifacts" / f"runs/{run_id}/{kind}/{name}"


@pytest.fixture
def run_id(caddie: Caddie, tmp_path: Path) -> int:
    """A run with a model, a log and a result in the store, recorded as the worker records them."""
    run_id = submit(caddie)
    store = LocalArtifactStore(caddie.home / "artifacts")
    with get_sessionmaker(caddie.db_url)() as session:
        for name, kind, data in (("model.int6.ptz", "model", MODEL), ("train.log", "log", LOG), ("result.json", "result", RESULT)):
            (tmp_path / name).write_bytes(data)
            uri, size, sha = store.put(run_id, kind, tmp_path / name)
            session.add(Artifact(run_id=run_id, kind=kind, uri=uri, bytes=size, sha256=sha, created_at=utcnow()))
        session.commit()
    return run_id


def one_error(result) -> str:  # noqa: ANN001 - click's Result
    """The command failed cleanly: exit 1, no traceback, exactly one `error:` line, and it is the last line."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
    return lines[-1].removeprefix("error: ")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_artifacts_lists_name_kind_bytes_and_sha_prefix(caddie: Caddie, run_id: int) -> None:
    out = caddie.ok("artifacts", str(run_id)).stdout
    for name, kind, data in (("model.int6.ptz", "model", MODEL), ("train.log", "log", LOG), ("result.json", "result", RESULT)):
        sha = hashlib.sha256(data).hexdigest()
        assert re.search(rf"^\s*{re.escape(name)}\s+{kind}\s+{len(data):,}\s+{sha[:12]}\s", out, re.M), out
        assert sha not in out  # a prefix, not the whole digest
    assert "no stored files" in caddie.ok("artifacts", str(submit(caddie))).stdout


def test_download_writes_identical_bytes_with_progress_and_checks(caddie: Caddie, run_id: int, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    result = caddie.ok("download", str(run_id), "--out", str(dest))
    assert (dest / "model.int6.ptz").read_bytes() == MODEL
    assert (dest / "train.log").read_bytes() == LOG and (dest / "result.json").read_bytes() == RESULT
    assert sorted(p.name for p in dest.iterdir()) == ["model.int6.ptz", "result.json", "train.log"]  # no temporary files left
    assert f"{dest / 'model.int6.ptz'}: {len(MODEL):,} bytes, sha256 ok" in result.stdout
    # The progress bar (stderr): file name, bytes done of total, speed.
    assert "model.int6.ptz" in result.stderr and re.search(r"6\.\d/6\.\d MB", result.stderr) and "/s" in result.stderr, result.stderr

    # Again: identical files are left alone, not downloaded a second time.
    before = (dest / "model.int6.ptz").stat().st_mtime_ns
    again = caddie.ok("download", str(run_id), "--out", str(dest))
    assert again.stdout.count("already there, same sha256") == 3 and (dest / "model.int6.ptz").stat().st_mtime_ns == before


def test_download_one_file_by_name_and_the_default_folder(caddie: Caddie, run_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "one"
    caddie.ok("download", str(run_id), "--out", str(dest), "--name", "train.log")
    assert [p.name for p in dest.iterdir()] == ["train.log"] and (dest / "train.log").read_bytes() == LOG
    assert one_error(caddie.cli("download", str(run_id), "--out", str(dest), "--name", "model.pt")) == (
        f"run {run_id} has no stored file 'model.pt' (it has: model.int6.ptz, train.log, result.json)"
    )
    monkeypatch.chdir(tmp_path)
    caddie.ok("download", str(run_id), "--name", "result.json")
    assert (tmp_path / f"run-{run_id}" / "result.json").read_bytes() == RESULT


def test_an_existing_different_file_needs_force(caddie: Caddie, run_id: int, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "train.log").write_bytes(b"my own notes\n")
    message = one_error(caddie.cli("download", str(run_id), "--out", str(dest)))
    assert message == f"{dest / 'train.log'} exists with other content; use --force to overwrite it"
    # Refused before anything was fetched: not even the other files were written.
    assert [p.name for p in dest.iterdir()] == ["train.log"] and (dest / "train.log").read_bytes() == b"my own notes\n"
    caddie.ok("download", str(run_id), "--out", str(dest), "--force")
    assert (dest / "train.log").read_bytes() == LOG and (dest / "model.int6.ptz").read_bytes() == MODEL


def test_a_sha256_mismatch_is_an_error_and_nothing_is_kept(caddie: Caddie, run_id: int, tmp_path: Path) -> None:
    # Same size, other bytes: the store's file no longer matches what caddie recorded.
    stored = store_path(caddie, run_id, "model", "model.int6.ptz")
    stored.write_bytes(b"X" + MODEL[1:])
    dest = tmp_path / "dl"
    result = caddie.cli("download", str(run_id), "--out", str(dest), "--name", "model.int6.ptz")
    message = one_error(result)
    sha = hashlib.sha256(MODEL).hexdigest()
    assert message.startswith(f"model.int6.ptz: sha256 mismatch (caddie recorded {sha[:12]}..., downloaded ") and message.endswith("the download was discarded")
    assert list(dest.iterdir()) == []  # neither the file nor its temporary copy

    # An existing good copy is not replaced by a bad download, even with --force.
    (dest / "model.int6.ptz").write_bytes(b"older copy")
    one_error(caddie.cli("download", str(run_id), "--out", str(dest), "--name", "model.int6.ptz", "--force"))
    assert (dest / "model.int6.ptz").read_bytes() == b"older copy" and leftovers(dest) == []


def test_a_download_cut_short_leaves_nothing(caddie: Caddie, run_id: int, tmp_path: Path) -> None:
    # The store's file lost its tail: the server sends fewer bytes than it announced.
    stored = store_path(caddie, run_id, "model", "model.int6.ptz")
    stored.write_bytes(MODEL[: len(MODEL) // 2])
    dest = tmp_path / "dl"
    message = one_error(caddie.cli("download", str(run_id), "--out", str(dest), "--name", "model.int6.ptz"))
    assert message.startswith(f"download of model.int6.ptz from caddie at {caddie.url} was cut off"), message
    assert list(dest.iterdir()) == []


def test_missing_runs_other_teams_and_gone_files_are_one_line_errors(caddie: Caddie, run_id: int, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    for args in (("artifacts", "999999"), ("download", "999999", "--out", str(dest))):
        assert one_error(caddie.cli(*args)) == "run 999999 not found"
    rival = caddie.rival_token  # type: ignore[attr-defined]
    for args in (("artifacts", str(run_id)), ("download", str(run_id), "--out", str(dest)), ("download", str(run_id), "--out", str(dest), "--name", "train.log")):
        assert one_error(caddie.cli(*args, CADDIE_TOKEN=rival)) == f"run {run_id} not found"
    assert not dest.exists()

    os.remove(store_path(caddie, run_id, "log", "train.log"))
    message = one_error(caddie.cli("download", str(run_id), "--out", str(dest), "--name", "train.log"))
    assert message == f"artifact 'train.log' of run {run_id} is no longer in the artifact store"
    assert list(dest.iterdir()) == []
    assert one_error(caddie.cli("download", str(submit(caddie)), "--out", str(dest))).endswith("has no stored files (yet)")
