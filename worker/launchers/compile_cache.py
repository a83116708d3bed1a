"""A team's compile cache: torch.compile's and Triton's caches kept between the team's runs on a node.

A run of the record stack spends minutes compiling before its first timed step (about 250 s for the
2026-04-09 record on one H100, bench/results/record_local_gpu.md), and in a sealed job that work lands
in the job's own /tmp and is thrown away with it. The next run of the same code compiles the same
graphs again. Inductor and Triton key every entry by the source, the torch and Triton versions and the
device, so a folder kept between runs turns most of that work into a file read, and a changed model or
a different torch simply misses.

One folder per team (CADDIE_COMPILE_CACHE_DIR/team-<id>/), bound writable into that team's sealed jobs
and into no other team's: compiled code is code, so one team's entries never run in another team's
job. The worker's own TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR never pass to a job
(worker.launchers.trainer_env), for the same reason. What a job adds to the folder counts toward its
disk limit (the wrapper measures the folder's growth), and the folder is trimmed to
CADDIE_COMPILE_CACHE_BYTES, least recently written first, before each of the team's jobs starts, unless
another of the team's jobs is running from it: each job's wrapper holds a shared lock on the folder for
the job's life (``in_use``), and a trim that cannot take it exclusively deletes nothing, since the running
job may be about to read any entry.

On a SkyPilot node (which serves one team: the team is in the cluster's name) the folder is
~/caddie-compile-cache, trimmed by ``python -m worker.launchers.compile_cache DIR MAX_BYTES`` before each job
(infra/skypilot/task.yaml).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

# The variables that point the compilers at the folder (set by the launcher, last, over anything else).
INDUCTOR_VAR, TRITON_VAR = "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"
CACHE_VARS = frozenset({INDUCTOR_VAR, TRITON_VAR, "TRITON_HOME"})  # never taken from the worker's environment
SUBFOLDERS = {INDUCTOR_VAR: "inductor", TRITON_VAR: "triton"}  # each compiler's part of a cache folder
TRIM_TO = 0.8  # a trim leaves the folder at this share of its limit, so the next few jobs need none
BUSY_MAX = 2  # a folder held by a running job is left alone up to this many times its limit


def prepare(folder: Path) -> Path:
    """``folder`` made a cache folder (if it is not one): its compilers' parts inside."""
    for sub in SUBFOLDERS.values():
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


def team_folder(root: Path, team_id: int) -> Path:
    """The team's cache folder (made if missing)."""
    return prepare(root / f"team-{int(team_id)}")


def cache_env(folder: Path) -> dict[str, str]:
    """The job's variables: inductor's and Triton's caches in the team's folder."""
    return {var: str(folder / sub) for var, sub in SUBFOLDERS.items()}


class Held(NamedTuple):
    """What a cache folder holds after a trim, and what the trim freed."""

    files: int
    bytes: int
    freed: int
    busy: bool = False  # over its limit but not trimmed: another job of the team was running from it

    def describe(self) -> str:
        if not self.files:
            return "the team's, empty (its first job on this machine, or everything changed)"
        return f"the team's, {self.files:,} file{'s' if self.files != 1 else ''} ({self.bytes / 1e9:.2f} GB) from its earlier jobs" + (
            f", {self.freed / 1e9:.2f} GB of the oldest trimmed" if self.freed else "") + (
            ", over its limit but not trimmed while another of the team's jobs runs from it" if self.busy else "")


@contextlib.contextmanager
def in_use(folder: Path) -> Iterator[None]:
    """Held by a job's wrapper while the job runs: a shared lock on the folder (flock on its directory), so no
    trim deletes an entry the job may be reading. Waits while a trim holds the folder (a trim is short)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:  # no folder, no entries a trim could take away
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def trim(folder: Path, max_bytes: int) -> Held:
    """Delete the least recently written files until the folder holds at most TRIM_TO of ``max_bytes``,
    if it holds more than ``max_bytes``; returns what is left and the bytes freed. Empty folders left behind are removed."""
    files: list[tuple[float, int, str]] = []
    total = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue  # a concurrent job's rename or delete
            files.append((st.st_mtime, st.st_blocks * 512, path))
            total += st.st_blocks * 512
    if total <= max_bytes:
        return Held(len(files), total, 0)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a running job holds it (in_use): the next job of the team trims it
            if total <= BUSY_MAX * max_bytes:
                return Held(len(files), total, 0, busy=True)
            # A team whose jobs always overlap would never be trimmed: past BUSY_MAX times its limit the disk
            # matters more, and a running job that loses an entry compiles it again (a miss, as inductor reads it).
        return _delete_oldest(folder, files, total, max_bytes)
    finally:
        os.close(fd)


def _delete_oldest(folder: Path, files: list[tuple[float, int, str]], total: int, max_bytes: int) -> Held:
    freed, gone, goal = 0, 0, total - int(max_bytes * TRIM_TO)
    for _mtime, size, path in sorted(files):
        if freed >= goal:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        freed, gone = freed + size, gone + 1
    for dirpath, dirs, names in os.walk(folder, topdown=False):
        if not dirs and not names and Path(dirpath) not in (folder, *(folder / sub for sub in SUBFOLDERS.values())):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass  # a job wrote into it meanwhile
    return Held(len(files) - gone, total - freed, freed)


def main(args: list[str] | None = None) -> int:
    """``python -m worker.launchers.compile_cache DIR MAX_BYTES``: make DIR a cache folder (inductor/, triton/) and
    trim it to MAX_BYTES; prints nothing (a SkyPilot node's run script, before its job)."""
    parser = argparse.ArgumentParser(prog="python -m worker.launchers.compile_cache")
    parser.add_argument("folder", type=Path)
    parser.add_argument("max_bytes", type=int)
    ns = parser.parse_args(args)
    trim(prepare(ns.folder), ns.max_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
