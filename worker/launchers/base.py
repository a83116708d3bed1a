"""The one small interface every launcher implements, and the values it passes around.

A launcher knows how to get a node ("cluster"), start the trainer on it, report
the job's state, hand back its log bytes and output files, stop it, and give the
node back. Handles are plain JSON so the executor can store them in the database
before it waits on anything and re-attach after a worker restart.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"  # the job is gone and nobody recorded how it ended


TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST})


@dataclass
class ClusterHandle:
    """A node (or group of nodes) a launcher can run jobs on."""

    launcher: str
    name: str
    hardware: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClusterHandle:
        return cls(launcher=d["launcher"], name=d["name"], hardware=d["hardware"], data=dict(d.get("data") or {}))


@dataclass
class LaunchHandle:
    """One submitted job; enough to find it again from another process."""

    launcher: str
    cluster: str
    job_id: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LaunchHandle:
        return cls(launcher=d["launcher"], cluster=d["cluster"], job_id=str(d["job_id"]), data=dict(d.get("data") or {}))


@dataclass
class JobSpec:
    """What to run: the trainer's knobs as env vars, on which hardware, for how long at most,
    on which data variant (``sp1024``: the launcher resolves its folders, a spec never names paths).

    A script run instead brings its own files (``script_files``: name -> bytes, train_gpt.py
    among them), and ``env`` holds its spec's variables plus SEED and RUN_ID.
    """

    run_id: int
    env: dict[str, str]
    hardware: str
    timeout_s: float
    data_variant: str = "sp1024"
    script_files: dict[str, bytes] = field(default_factory=dict)
    # One per attempt of a run, decided before the launcher is asked: a launcher that can
    # (``find``) tags the job with it, so an executor that died before recording the
    # handle is followed by one that finds the job instead of starting a second trainer.
    launch_key: str = ""
    # A script run's declared environment, canonical (service.runs.scripts.environment.describe):
    # built on the node before the job starts, the job's Python taken from it. None: the node's own.
    environment: dict[str, Any] | None = None
    # The run's team: its compile cache (worker.launchers.compile_cache). None: the job compiles in its own /tmp.
    team_id: int | None = None

    @property
    def is_script(self) -> bool:
        return bool(self.script_files)


@dataclass
class JobStatus:
    state: JobState
    exit_code: int | None = None
    reason: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_JOB_STATES


class LauncherError(Exception):
    """Base of the two errors a launcher raises to the executor."""


class RetryLater(LauncherError):
    """Transient: no capacity, quota, preemption, cluster gone. Requeue the run."""


class LaunchFailed(LauncherError):
    """Permanent: no cloud enabled, invalid task, bad hardware string. Fail the run with this reason."""


class LauncherUnreachable(LauncherError):
    """The launcher's backend could not be asked (e.g. the SkyPilot API server is down).

    Nothing was changed: poll again later; do not requeue or fail the run for this alone.
    """


@runtime_checkable
class Launcher(Protocol):
    name: str

    def acquire(self, run_id: int, hardware: str, exclude: Collection[str] = (), team_id: int | None = None) -> ClusterHandle:
        """A node for the run; never one named in `exclude` (warm clusters another run claimed first),
        never a warm node another team used (`team_id`: the run's team; None reuses no warm node)."""
        ...

    def submit(self, cluster: ClusterHandle, job: JobSpec) -> LaunchHandle: ...

    def status(self, handle: LaunchHandle) -> JobStatus: ...

    def read_log(self, handle: LaunchHandle, offset: int) -> bytes:
        """Bytes of the job's combined stdout/stderr from `offset` on (b"" when nothing new)."""
        ...

    def cancel(self, handle: LaunchHandle) -> None: ...

    def collect(self, handle: LaunchHandle, dest: Path) -> Path:
        """A local directory holding the job's outputs (result.json, model.int6.ptz, train.log, metrics.jsonl)."""
        ...

    def release(self, cluster: ClusterHandle, keep_warm: bool) -> None: ...

    def list_clusters(self) -> list[ClusterHandle]: ...

    # Optional (the executor asks where a launcher has it): environment(handle, outdir) -> dict | None,
    # what the job's Python held (service.runs.scripts.environment's report), read after collect;
    # environment_at_launch(handle) -> dict | None, the same where it is known once the job is submitted.
