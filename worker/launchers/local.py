"""The local launcher: the trainer as a subprocess of this machine.

Layout of one job (runs_dir/<run_id>/attempt-<n>/, also the trainer's OUTPUT_DIR):

    stdout.log        the trainer's stdout and stderr, combined; what read_log streams (removed
                      once the run has ended: its log is the one stored, up to the cap)
    data              a link to the worker's data root (CADDIE_DATA_ROOT): DATA_PATH and
                      TOKENIZER_PATH are ./data/... of the run's data variant
    child.json        pid, process group and start time of the trainer process
    exit_code.json    written atomically by the wrapper when the trainer ends (`limit_exceeded`: the
                      memory or disk limit it stopped the job at, or the hang it saw, worker.launchers.limits)
    cancel_requested  written by cancel() before any signal is sent (its text: why, if not the user)
    train.log, metrics.jsonl, result.json, model.int6.ptz   written by the trainer
    train_gpt.py and its files   a script run's own (it runs here instead of the trainer,
                      under torchrun over this machine's GPUs, or python without one)

A script run that declares its environment runs the Python of CADDIE_ENVS_DIR/<hash>/, built
with uv before its job starts (worker.launchers.envs), read-only inside its sandbox. Every job of a
team compiles into CADDIE_COMPILE_CACHE_DIR/team-<id>/ (worker.launchers.compile_cache), writable inside.

The worker starts `python -m worker.launchers.local_wrapper`, never a shell, in
a new session; the wrapper starts the trainer and records how it ended. The
handle holds the wrapper's pid, process group and start time (so a reused pid
is never mistaken for our job), which is all a restarted worker needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import psutil

from service.core.hardware import NodeHardware, probe_local_node
from service.core.storage import mount_of
from service.runs.logparse import failure_reason
from service.runs.scripts.spec import SCRIPT_NAME
from trainer.recipes import Recipe, RecipeError, built_folder, content_hash
from worker.launchers import compile_cache
from worker.launchers.base import (
    ClusterHandle,
    JobSpec,
    JobState,
    JobStatus,
    LaunchFailed,
    LaunchHandle,
)
from worker.launchers.envs import BuiltEnv, ensure_env, probe, read_report
from worker.launchers.limits import DISK_SETTING, gib, memory_limit
from worker.launchers.local_wrapper import (
    CHILD_FILE,
    EXIT_FILE,
    STDOUT_LOG,
    write_json_atomic,
)
from worker.launchers.run_folder import place_files
from worker.launchers.sandbox import TMPFS, python_roots, sealed_argv
from worker.launchers.trainer_env import (
    data_env,
    inherited_env,
    knob_env,
    recipe_of,
    script_env,
)

NAME = "local"
CANCEL_FILE = "cancel_requested"
LAUNCH_FILE = "launch.json"  # the job's launch key, then its wrapper's pid: worker.run.executor finds the job by its key
READ_LOG_MAX_BYTES = 1 << 20  # read_log returns at most this much per call; callers loop
REPO_ROOT = Path(__file__).resolve().parents[2]  # holds the worker and trainer packages
DATA_LINK = "data"  # in each work dir: a link to the worker's data root, so the trainer's paths are relative
# The wrapper's own stderr. It writes none while it works (the job's output goes to STDOUT_LOG), so
# anything here is the wrapper failing before or around the job (a Python it cannot start on, an import).
WRAPPER_ERR = "wrapper.err"


def count_local_gpus() -> int:
    """Number of NVIDIA GPUs `nvidia-smi -L` lists (0 without a driver); no torch import."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if out.returncode != 0:
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _same_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The live (non-zombie) process `pid`, if it is the one started at `create_time`."""
    if not pid:
        return None
    try:
        p = psutil.Process(pid)
        if create_time is not None and abs(p.create_time() - create_time) > 0.05:
            return None  # the pid was reused by another process
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def signal_of_exit(rc: int) -> str:
    """'signal 9 (SIGKILL)' for an exit status that means a signal ended the process
    (-N from Popen, 128+N from a shell or launcher), '' otherwise. Its last log line
    would only say what it was doing when it was killed."""
    n = -rc if rc < 0 else rc - 128 if 128 < rc < 128 + signal.NSIG else 0
    if not n:
        return ""
    try:
        name = signal.Signals(n).name
    except ValueError:
        return f"signal {n}"
    hint = ": out of memory, or killed from outside" if n == signal.SIGKILL else ""
    if n == signal.SIGXFSZ:
        hint = f": a file it wrote grew past the file-size limit (RLIMIT_FSIZE, {DISK_SETTING})"
    return f"signal {n} ({name}){hint}"


DISK_FULL_BYTES = 1 << 20  # a run folder's disk with less free space than this is full for the job


def _disk_full(workdir: Path) -> str:
    """Why the job could not go on if the run folder's disk is full, else ""."""
    try:
        free = shutil.disk_usage(workdir).free
    except OSError:
        return ""
    if free >= DISK_FULL_BYTES:
        return ""
    return f"disk full: no space left on {mount_of(workdir)} for the run folder {workdir} ({free:,} bytes free); not retried on this disk"


# A line of the job's log that says a write was refused: the disk is full (ENOSPC), the quota
# is spent (EDQUOT), or a file hit the process's file-size limit (EFBIG). Python prints the
# errno only ("OSError: [Errno 28] No space left on device"), never which folder.
_WRITE_REFUSED = re.compile(r"\[Errno (?:28|122|27)\]|No space left on device|Disk quota exceeded|File too large")


def write_refused(log_tail: str, workdir: Path, mount: Path, file_limit: int = 0) -> str:
    """Why the job failed if its log says a write was refused, naming the run folder and its disk, and the
    setting behind a file-size limit (``file_limit``: the job's RLIMIT_FSIZE, CADDIE_JOB_DISK_BYTES); else "" (pure)."""
    line = next((ln.strip() for ln in reversed(log_tail.splitlines()) if _WRITE_REFUSED.search(ln)), "")
    if not line:
        return ""
    if "File too large" in line or "[Errno 27]" in line:
        limit = f"; no file of the job may grow past {DISK_SETTING}={file_limit} ({gib(file_limit)})" if file_limit > 0 else ""
        return f"file-size limit: a write in the run folder {workdir} (disk {mount}) was refused: {line[:300]}{limit}"
    return f"disk full: a write in the run folder {workdir} (disk {mount}) was refused: {line[:300]}; not retried on this disk"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _log_tail(log: Path, tail_bytes: int = 64 * 1024) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - tail_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _last_error_line(log: Path) -> str:
    """The most telling line near the end of the log (logparse.failure_reason)."""
    return failure_reason(_log_tail(log))


class LocalLauncher:
    """Runs jobs on this machine; one pseudo-cluster called `local`."""

    name = NAME

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.runs_dir = Path(settings.runs_dir).resolve()
        self.grace_s = float(settings.cancel_grace_s)
        self._gpus: int | None = settings.gpu_count
        self._node: NodeHardware | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # reaped in status(), so no zombies pile up
        self.data_root = Path(settings.data_root).resolve()

    # --- nodes -----------------------------------------------------------------
    def acquire(self, run_id: int, hardware: str, exclude: Collection[str] = (), team_id: int | None = None) -> ClusterHandle:
        # One machine, shared by every run on it (capacity is the scheduler's business).
        return ClusterHandle(launcher=NAME, name=NAME, hardware=hardware, data={})

    def release(self, cluster: ClusterHandle, keep_warm: bool) -> None:
        return None

    def list_clusters(self) -> list[ClusterHandle]:
        return [ClusterHandle(launcher=NAME, name=NAME, hardware=f"local:{self.gpu_count()}", data={})]

    def node_hardware(self, cluster: ClusterHandle) -> NodeHardware:
        """This machine's GPUs as the job will use them: every one `nvidia-smi -L` lists (CADDIE_GPU_COUNT
        caps the count), else the CPU; probed once per launcher, like gpu_count."""
        if self._node is None:
            self._node = probe_local_node(self.settings.gpu_count)
        return self._node

    def gpu_count(self) -> int:
        if self._gpus is None:
            self._gpus = count_local_gpus()
        return self._gpus

    # --- jobs --------------------------------------------------------------------
    def trainer_argv(self) -> list[str]:
        if self.settings.trainer_command:
            return list(self.settings.trainer_command)
        n = self.gpu_count()
        if n > 0:
            # `python -m torch.distributed.run` is torchrun without relying on PATH
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "trainer"]
        return [sys.executable, "-m", "trainer"]

    def script_argv(self, python: str = sys.executable) -> list[str]:
        """A team's own train_gpt.py as the challenge runs it: torchrun over this machine's GPUs, else plain python
        (``python``: its declared environment's, else the worker's own)."""
        n = self.gpu_count()
        if n > 0:
            return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", SCRIPT_NAME]
        return [python, SCRIPT_NAME]

    @property
    def envs_dir(self) -> Path:
        return Path(getattr(self.settings, "envs_dir", None) or Path(self.settings.home) / "envs").resolve()

    def _environment(self, job: JobSpec) -> BuiltEnv | None:
        """The run's declared environment, built now unless this machine has it (LaunchFailed: why not)."""
        if not job.environment:
            return None
        s = self.settings
        return ensure_env(self.envs_dir, job.environment, wheels=getattr(s, "env_wheels", None), offline=bool(getattr(s, "env_offline", False)),
                          timeout_s=float(getattr(s, "env_build_timeout_s", 1800.0)))

    def environment_at_launch(self, handle: LaunchHandle) -> dict[str, Any] | None:
        """A built environment's report, known before the job runs, so a run shows what it runs on while it
        runs, and keeps it if it is cancelled or stopped before its outputs are collected (None: a job on the
        worker's own Python, probed after collect)."""
        name = handle.data.get("env")
        return read_report(self.envs_dir / str(name)) if name else None

    def environment(self, handle: LaunchHandle, outdir: Path) -> dict[str, Any] | None:
        """What the job's Python held: its built environment's report, else the worker's own Python's (probed now)."""
        if handle.data.get("env"):
            return self.environment_at_launch(handle)
        return probe(sys.executable)

    def _recipe(self, job: JobSpec) -> Recipe:
        return recipe_of(job.data_variant, getattr(self.settings, "data_sources", ""), trainer=not job.is_script)

    def _data_folder(self, job: JobSpec, recipe: Recipe) -> Path:
        """What the run sees as ./data: the data root, or a built recipe's folder under it (by content hash)."""
        if not recipe.built:
            return self.data_root
        try:
            return self.data_root / built_folder(content_hash(recipe, job.script_files))
        except RecipeError as exc:
            raise LaunchFailed(str(exc)) from None

    def _check_variant(self, job: JobSpec, recipe: Recipe) -> None:
        # A script reads the data itself; name what is missing before it starts rather than after.
        if recipe.built:
            return  # built in submit, from the run's own files
        if not (self.data_root / recipe.data_path).is_dir():
            raise LaunchFailed(f"data variant {recipe.variant} is not on this machine: no {recipe.data_path} under "
                               f"CADDIE_DATA_ROOT ({self.data_root}); fetch it once with "
                               f"`python -m trainer.data download --variant {recipe.variant} --out {self.data_root}`")

    def _build_data(self, job: JobSpec, recipe: Recipe, workdir: Path) -> None:
        """A built recipe's data, made once on this machine by the run's own script (trainer.data download
        --files), sealed like the job unless the operator opted out; its failure fails the run, saying why.
        It runs here, before the job starts: a first build holds this submit for as long as it takes."""
        if self._data_folder(job, recipe).is_dir():
            return
        argv = [sys.executable, "-m", "trainer.data", "download", "--variant", recipe.variant, "--out", str(self.data_root),
                "--files", str(workdir), "--sources", getattr(self.settings, "data_sources", "")]
        if not job.is_script:
            argv.append("--trainer")  # the shared trainer's recipe: caddie's own builder, no run files
        if self.sealed:
            argv += ["--sandbox", f"{sys.executable} -m worker.launchers.sandbox --die-with-parent"]
        env = {**inherited_env(os.environ), "PYTHONPATH": str(REPO_ROOT)}
        try:
            done = subprocess.run(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise LaunchFailed(f"cannot build data {recipe.variant}: {exc}") from exc
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("error: ")
            raise LaunchFailed(f"data {recipe.variant} could not be built: {why}")

    def _new_workdir(self, run_id: int) -> Path:
        run_dir = self.runs_dir / str(int(run_id))
        run_dir.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            d = run_dir / f"attempt-{n}"
            try:
                d.mkdir()  # atomic: two submits never share a directory
                return d
            except FileExistsError:
                n += 1

    def _child_env(self, job: JobSpec, workdir: Path) -> dict[str, str]:
        """The allow-listed environment (worker.launchers.trainer_env); paths relative to the work dir, the trainer's cwd."""
        recipe = self._recipe(job)
        env = inherited_env(os.environ)
        run_env = script_env(job.env, recipe) if job.is_script else knob_env(job.env)
        env.update(run_env)
        env.update(data_env(recipe, run_env))
        link = workdir / DATA_LINK
        if not link.is_symlink():
            link.symlink_to(self._data_folder(job, recipe), target_is_directory=True)
        env["OUTPUT_DIR"] = "."  # the work dir
        if not job.is_script:
            env["PYTHONPATH"] = str(REPO_ROOT)  # the trainer package; nothing of the worker's own path (a script gets neither)
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach stdout.log as they are printed
        return env

    @property
    def sealed(self) -> bool:
        return getattr(self.settings, "sandbox", "bwrap") != "none"

    @property
    def idle_s(self) -> float:
        """CADDIE_IDLE_TIMEOUT_S: the wrapper stops a job silent and idle this long as hung (0: off)."""
        return float(getattr(self.settings, "idle_timeout_s", 0.0))

    def limits(self) -> tuple[int, int]:
        """A running job's memory and disk limits in bytes (CADDIE_JOB_MEMORY_BYTES, CADDIE_JOB_DISK_BYTES; 0 disk: none)."""
        return memory_limit(int(getattr(self.settings, "job_memory_bytes", 0))), int(getattr(self.settings, "job_disk_bytes", 0))

    def _compile_cache(self, job: JobSpec) -> tuple[Path, compile_cache.Held] | None:
        """The team's compile cache folder, trimmed to CADDIE_COMPILE_CACHE_BYTES (worker.launchers.compile_cache),
        and what it holds; None with the cache off or a job of no team."""
        limit = int(getattr(self.settings, "compile_cache_bytes", 0))
        if job.team_id is None or limit <= 0:
            return None
        root = Path(getattr(self.settings, "compile_cache_dir", None) or Path(self.settings.home) / "compile-cache").resolve()
        folder = compile_cache.team_folder(root, job.team_id)
        return folder, compile_cache.trim(folder, limit)

    def _job_argv(self, job: JobSpec, workdir: Path, built: BuiltEnv | None = None, cache: Path | None = None) -> list[str]:
        """The job's command, sealed (worker.launchers.sandbox) unless the operator opted out."""
        argv = (self.script_argv(str(built.python)) if built is not None else self.script_argv()) if job.is_script else self.trainer_argv()
        if not self.sealed:
            return argv
        ro = [self.data_root, REPO_ROOT / "worker" / "audit"]  # the audit hook a script run's Python loads (missing: not bound)
        if built is not None:
            ro += built.ro_paths()  # its environment, read-only
        if not job.is_script:
            ro.append(REPO_ROOT / "trainer")  # the shared trainer's code, read-only
            # an operator's stand-in trainer command names its files by absolute path
            ro += [Path(a) for a in self.settings.trainer_command or []
                   if Path(a).is_absolute() and Path(a).is_file() and not any(Path(a).is_relative_to(r) for r in python_roots())]
        return sealed_argv(argv, workdir=workdir, ro_paths=ro, tmpfs_bytes=self.limits()[0], rw_paths=[cache] if cache else [])

    def submit(self, cluster: ClusterHandle, job: JobSpec) -> LaunchHandle:
        recipe = self._recipe(job)
        if job.is_script:
            self._check_variant(job, recipe)
        # Before the run folder: a missing system package or a failed build ends the run here, saying
        # which (uv's own lines), not after its training. A first build holds this submit as long as it takes.
        built = self._environment(job)
        workdir = self._new_workdir(job.run_id)
        env = self._child_env(job, workdir)
        if built is not None:  # `python` and the environment's commands first, as in an activated venv
            env["PATH"] = f"{built.folder / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
            env["VIRTUAL_ENV"] = str(built.folder)
        cache, held = self._compile_cache(job) or (None, None)
        if cache is not None:
            env.update(compile_cache.cache_env(cache))  # last: a script's own TORCHINDUCTOR_CACHE_DIR would point outside its sandbox
        if job.is_script:
            place_files(workdir, job.script_files)
            if recipe.built:
                self._build_data(job, recipe, workdir)
        memory, disk = self.limits()
        argv = [
            sys.executable, "-m", "worker.launchers.local_wrapper",
            "--workdir", str(workdir),
            "--timeout", str(float(job.timeout_s or 0)),
            "--grace", str(self.grace_s),
            "--memory-bytes", str(memory), "--disk-bytes", str(disk),
            "--idle-s", str(self.idle_s),
            *(a for m in (TMPFS if self.sealed else ()) for a in ("--tmpfs", m)),  # the sandbox's own RAM folders count as its memory
            *(("--shared", str(cache)) if cache is not None else ()),  # what the job adds to its team's cache is its disk too
            "--", *self._job_argv(job, workdir, built, cache),
        ]  # fmt: skip
        (workdir / STDOUT_LOG).touch()
        launch = {"key": job.launch_key, "cluster": cluster.name, "timeout_s": float(job.timeout_s or 0), "memory_bytes": memory, "disk_bytes": disk}
        if built is not None:
            launch["env"] = built.folder.name
        write_json_atomic(workdir / LAUNCH_FILE, launch)  # before the job exists: a job is never without its key
        try:
            # a new session: the worker's own signals and death never reach the job
            with open(workdir / WRAPPER_ERR, "wb") as err:
                proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        except OSError as exc:
            raise LaunchFailed(f"cannot start the local trainer: {exc}") from exc
        self._children[proc.pid] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = None  # already gone; status() falls back to the exit-code file
        write_json_atomic(workdir / LAUNCH_FILE, {**launch, "pid": proc.pid, "create_time": create_time})
        return LaunchHandle(
            launcher=NAME,
            cluster=cluster.name,
            job_id=f"{job.run_id}/{workdir.name}",
            data={"pid": proc.pid, "pgid": proc.pid, "create_time": create_time, "workdir": str(workdir), "timeout_s": float(job.timeout_s or 0),
                  **({"env": launch["env"]} if "env" in launch else {}),
                  **({"compile_cache": held.describe()} if held is not None else {})},
        )

    def find(self, run_id: int, launch_key: str, cluster: ClusterHandle | None = None) -> LaunchHandle | None:
        """The job submitted with `launch_key` for run `run_id` (running or ended), or None if none was started
        (`cluster` unused: this machine is the only one)."""
        if not launch_key:
            return None
        for workdir in sorted((self.runs_dir / str(int(run_id))).glob("attempt-*")):
            launch = _read_json(workdir / LAUNCH_FILE) or {}
            if launch.get("key") != launch_key:
                continue
            if "pid" not in launch and not (workdir / CHILD_FILE).exists() and not (workdir / EXIT_FILE).exists():
                continue  # its submit died before the wrapper started: nothing runs there
            pid = launch.get("pid")
            return LaunchHandle(
                launcher=NAME,
                cluster=str(launch.get("cluster") or NAME),
                job_id=f"{run_id}/{workdir.name}",
                data={"pid": pid, "pgid": pid, "create_time": launch.get("create_time"), "workdir": str(workdir), "timeout_s": float(launch.get("timeout_s") or 0),
                      **({"env": launch["env"]} if launch.get("env") else {})},
            )
        return None

    def _reap(self, pid: int | None) -> None:
        proc = self._children.get(pid) if pid else None
        if proc is not None and proc.poll() is not None:
            del self._children[proc.pid]

    def status(self, handle: LaunchHandle) -> JobStatus:
        workdir = Path(handle.data["workdir"])
        pid = handle.data.get("pid")
        self._reap(pid)
        ended = _read_json(workdir / EXIT_FILE)
        if ended is None:
            if _same_process(pid, handle.data.get("create_time")) is not None:
                return JobStatus(JobState.RUNNING)
            child = _read_json(workdir / CHILD_FILE) or {}
            if _same_process(child.get("pid"), child.get("create_time")) is not None:
                return JobStatus(JobState.RUNNING, reason="wrapper gone, trainer still running")
            ended = _read_json(workdir / EXIT_FILE)  # it may have finished between the two looks
        cancelled = _cancel_reason(workdir)
        if ended is None:
            if cancelled:
                return JobStatus(JobState.CANCELLED, reason=cancelled)
            if full := _disk_full(workdir):  # the wrapper could not even record the exit: FAILED, not retried here
                return JobStatus(JobState.FAILED, reason=full)
            if said := _last_error_line(workdir / WRAPPER_ERR):  # it failed the same way on any node: FAILED, not retried as lost
                return JobStatus(JobState.FAILED, reason=f"caddie's job wrapper failed: {said}")
            return JobStatus(JobState.LOST, reason=f"trainer process {pid} is gone and left no exit code")
        rc = int(ended["exit_code"])
        if cancelled:
            return JobStatus(JobState.CANCELLED, rc, cancelled)
        if ended.get("limit_exceeded"):  # the wrapper stopped it at its memory or disk limit, or as hung: FAILED, not retried
            return JobStatus(JobState.FAILED, rc, str(ended["limit_exceeded"]))
        if rc == 0:
            return JobStatus(JobState.SUCCEEDED, 0, "")
        if ended.get("timed_out"):
            return JobStatus(JobState.FAILED, rc, f"hard timeout after {handle.data.get('timeout_s', 0):.0f} s")
        if full := _disk_full(workdir):
            return JobStatus(JobState.FAILED, rc, full)
        killed_by = signal_of_exit(rc)
        if killed_by:
            return JobStatus(JobState.FAILED, rc, f"trainer killed by {killed_by}")
        file_limit = int((_read_json(workdir / LAUNCH_FILE) or {}).get("disk_bytes") or 0)
        if refused := write_refused(_log_tail(workdir / STDOUT_LOG), workdir, mount_of(workdir), file_limit):
            return JobStatus(JobState.FAILED, rc, refused)  # space may be back by now: the log says what the disk did
        result = _read_json(workdir / "result.json") or {}
        detail = result.get("error") or _last_error_line(workdir / STDOUT_LOG) or "no output"
        return JobStatus(JobState.FAILED, rc, f"trainer exited with code {rc}: {detail}")

    def read_log(self, handle: LaunchHandle, offset: int) -> bytes:
        path = Path(handle.data["workdir"]) / STDOUT_LOG
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, int(offset)))
                return fh.read(READ_LOG_MAX_BYTES)
        except FileNotFoundError:
            return b""

    def cancel(self, handle: LaunchHandle) -> None:
        """SIGTERM the trainer's process group (through the wrapper), SIGKILL whatever is left after the grace period."""
        workdir = Path(handle.data["workdir"])
        if (workdir / EXIT_FILE).exists():
            return
        (workdir / CANCEL_FILE).touch()
        pid, pgid = handle.data.get("pid"), handle.data.get("pgid")
        wrapper = _same_process(pid, handle.data.get("create_time"))
        child = _read_json(workdir / CHILD_FILE) or {}
        trainer = _same_process(child.get("pid"), child.get("create_time"))
        if wrapper is not None:
            try:
                wrapper.send_signal(signal.SIGTERM)  # it forwards to the trainer's group and records the exit code
            except psutil.NoSuchProcess:
                pass  # it just ended by itself
        elif trainer is not None:
            _killpg(child["pgid"], signal.SIGTERM)  # the wrapper died earlier; signal the trainer ourselves
        deadline = time.monotonic() + self.grace_s + 1.5  # the wrapper's own SIGKILL comes after grace_s
        while time.monotonic() < deadline and self._alive(handle):
            time.sleep(0.05)
        if self._alive(handle):
            child = _read_json(workdir / CHILD_FILE) or {}
            if _same_process(child.get("pid"), child.get("create_time")) is not None:
                _killpg(child.get("pgid"), signal.SIGKILL)
            if _same_process(pid, handle.data.get("create_time")) is not None:
                _killpg(pgid, signal.SIGKILL)
            end = time.monotonic() + 1.0
            while time.monotonic() < end and self._alive(handle):
                time.sleep(0.05)

    def stop_all(self, reason: str) -> int:
        """Stop every job of this machine's runs dir that is still running (``caddie up`` shutting down).

        Each is marked cancelled with `reason` (what its run will say), its trainer's
        process group gets SIGTERM, and SIGKILL after the grace period; its wrapper
        then records the exit and ends. Returns how many jobs were stopped.
        """
        running = []
        for workdir in sorted(self.runs_dir.glob("*/attempt-*")):
            child = _read_json(workdir / CHILD_FILE) or {}
            if (workdir / EXIT_FILE).exists() or _same_process(child.get("pid"), child.get("create_time")) is None:
                continue
            (workdir / CANCEL_FILE).write_text(reason + "\n", encoding="utf-8")
            _killpg(child.get("pgid"), signal.SIGTERM)
            running.append(child)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and any(_same_process(c.get("pid"), c.get("create_time")) for c in running):
            time.sleep(0.05)
        for c in running:
            if _same_process(c.get("pid"), c.get("create_time")) is not None:
                _killpg(c.get("pgid"), signal.SIGKILL)
        return len(running)

    def _alive(self, handle: LaunchHandle) -> bool:
        """Is the wrapper or the trainer of this job still running?"""
        self._reap(handle.data.get("pid"))
        child = _read_json(Path(handle.data["workdir"]) / CHILD_FILE) or {}
        return (
            _same_process(handle.data.get("pid"), handle.data.get("create_time")) is not None
            or _same_process(child.get("pid"), child.get("create_time")) is not None
        )

    def collect(self, handle: LaunchHandle, dest: Path) -> Path:
        """The job's own work dir (the files are already on this machine; `dest` is not used)."""
        return Path(handle.data["workdir"])

    def discard_log(self, handle: LaunchHandle) -> None:
        """Remove stdout.log once the run has ended (the executor calls it): the run's log is stored
        up to the cap, and this uncapped copy would be a second one (retention takes the rest)."""
        (Path(handle.data["workdir"]) / STDOUT_LOG).unlink(missing_ok=True)


def _cancel_reason(workdir: Path) -> str:
    """'' if the job was not cancelled; else why (what cancel_requested says, or 'cancelled')."""
    try:
        return (workdir / CANCEL_FILE).read_text(encoding="utf-8").strip() or "cancelled"
    except FileNotFoundError:
        return ""


def _killpg(pgid: int | None, sig: int) -> None:
    if not pgid:
        return
    try:
        os.killpg(int(pgid), sig)
    except (ProcessLookupError, PermissionError):
        pass

