"""A full disk under the artifact store (a small tmpfs, mounted as root): no partial file
stays behind, the run's reason names the disk and the path, its figures are kept, and
the next run succeeds once space is back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from service.core.models import Artifact, Run
from service.core.storage import DiskFull, LocalArtifactStore
from tests.worker.run.test_executor import maker, new_run, settings  # noqa: F401 (fixtures)
from worker.launchers.local import LocalLauncher
from worker.run.executor import execute_run


@pytest.fixture()
def small_disk(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Take all the space but a little: a filler file written until the disk refuses."""
    filler = disk / "filler"
    assert os.path.ismount(disk)  # never fill a real disk
    with open(filler, "wb", buffering=0) as fh:
        try:
            for _ in range(1024):
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_full_store_leaves_no_partial_file_and_names_the_disk(small_disk: Path, tmp_path: Path) -> None:
    store = LocalArtifactStore(small_disk / "artifacts")
    big = tmp_path / "model.int6.ptz"
    big.write_bytes(b"x" * 400_000)  # more than the whole disk
    with pytest.raises(DiskFull) as err:
        store.put(1, "model", big)
    assert f"no space left on {small_disk}" in str(err.value) and "model.int6.ptz" in str(err.value)
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []  # the partial .tmp is gone
    small = tmp_path / "result.json"
    small.write_bytes(b"{}")
    assert store.put(1, "result", small)[1] == 2  # the disk took what fits right after


def test_a_run_whose_outputs_do_not_fit_fails_with_its_figures_then_the_next_succeeds(maker, settings, small_disk: Path) -> None:  # noqa: F811
    store = LocalArtifactStore(small_disk / "artifacts")
    filler = fill(small_disk)
    run_id = new_run(maker)
    out = execute_run(run_id, launcher=LocalLauncher(settings), session_factory=maker, store=store, settings=settings)
    with maker() as s:
        run = s.get(Run, run_id)
        assert run.status == "FAILED" and run.val_bpb == 2.5, out  # the figures are kept
        assert f"no space left on {small_disk}" in run.status_reason and "artifacts" in run.status_reason
    assert not [p for p in small_disk.rglob("*.tmp")]
    filler.unlink()  # space is back
    again = new_run(maker)
    assert execute_run(again, launcher=LocalLauncher(settings), session_factory=maker, store=store, settings=settings) == f"run {again} SUCCEEDED"
    with maker() as s:
        assert s.scalars(select(Artifact.kind).where(Artifact.run_id == again)).all()


FILLS_ITS_DISK = r'''
import os
print("step:1/2 train_loss:5.5000 train_time:10ms step_avg:10.00ms", flush=True)
with open("checkpoint.bin", "wb", buffering=0) as fh:  # in the run folder, its cwd
    try:
        for _ in range(32):  # 2 MiB at most: never more than the small disk, wherever it runs
            fh.write(b"\0" * 65536)
    except OSError as exc:
        print(f"error: {exc}", flush=True)
        raise SystemExit(1)
'''


def test_a_full_run_folder_disk_fails_the_run_once_naming_the_disk(maker, settings, small_disk: Path, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "fills.py"
    script.write_text(FILLS_ITS_DISK)
    home = small_disk / "home"
    # runs_dir explicitly: model_copy does not re-derive it from home
    s2 = settings.model_copy(update={"home": home, "runs_dir": home / "runs", "trainer_command": [settings.trainer_command[0], str(script)], "max_attempts": 3})
    run_id = new_run(maker)
    execute_run(run_id, launcher=LocalLauncher(s2), session_factory=maker, store=LocalArtifactStore(tmp_path / "artifacts"), settings=s2)
    with maker() as s:
        run = s.get(Run, run_id)
        assert run.status == "FAILED" and (run.attempts or 0) == 0, run.status_reason  # not retried on the same disk
        assert f"no space left on {small_disk} for the run folder {home}" in run.status_reason
    assert len(list((home / "runs" / str(run_id)).glob("attempt-*"))) == 1
