"""The SkyPilot launcher: runs on 8x H100 (or any hardware) of any cloud, Kubernetes
context or other infra SkyPilot 0.9 reaches, through its client SDK.

How each launcher call maps onto the SDK (every SDK call returns a request id of
the SkyPilot API server; `sky.get` waits for its result or raises its error):

    acquire        sky.status + sky.queue: an UP caddie cluster with this hardware,
                   warmed by this run's team, with no unfinished job is reused;
                   otherwise a fresh cluster name (the team in it)
    submit         sky.exec into a reused cluster, else sky.launch with
                   idle_minutes_to_autostop and down=True (a leaked node downs itself);
                   returns at once with the request id, before any provisioning
    status         sky.api_status / sky.get of that request until it yields the job
                   id, then sky.job_status
    read_log       sky.tail_logs(follow=False) into a buffer; bytes after `offset`
    cancel         sky.api_cancel of a pending launch, sky.cancel of the job
    find           sky.api_status (an unfinished launch/exec request of the run's
                   cluster whose task is named by the attempt's launch key) then
                   sky.queue (a job of that name; a clean-up job has its own):
                   what a restarted executor adopts instead of launching again
    collect        sky.download_logs: the run script copies OUTPUT_DIR into the
                   job's log folder, so the outputs come back with the logs
    discard_log    sky.exec of a small job that removes the run's folders on the
                   node once the run has ended (its outputs collected)
    release        keep warm: sky.autostop(down=True) after the keep-warm window;
                   else sky.down
    list_clusters  sky.status, the clusters whose names start with the prefix

SkyPilot is imported lazily: the `skypilot` extra is optional and the local
launcher must work without it.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from service.core.hardware import NodeHardware, parse_gpu_list
from service.runs.logparse import failure_reason
from trainer.recipes import RecipeError, built_folder, content_hash
from worker.launchers.base import (
    ClusterHandle,
    JobSpec,
    JobState,
    JobStatus,
    LauncherError,
    LauncherUnreachable,
    LaunchFailed,
    LaunchHandle,
    RetryLater,
)
from worker.launchers.run_folder import place_files
from worker.launchers.trainer_env import data_env, knob_env, recipe_of, script_env

NAME = "skypilot"
log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "infra" / "skypilot" / "task.yaml"
# The node's `nvidia-smi -L`, written by the run script beside the job's log (infra/skypilot/task.yaml).
NODE_REPORT = "caddie-node.txt"
ENV_REPORT = "caddie-env.json"  # what the job's Python held, written by the run script beside the job's log
_RUN_KEY = re.compile(r"run-[0-9]+-[A-Za-z0-9-]+")  # run-12-attempt-1: no slash, no dots, never empty (it names folders to remove)
# A run's folders on the node, removed once its worker has collected its outputs (discard_log): its SkyPilot
# log folder, found by the run key the run script left there (out of the job's reach), its run folder and
# its script files. Nothing of another run: the run key is the attempt's own.
CLEANUP_RUN = """\
set -u
[ -n "${CADDIE_RUN_KEY}" ] || exit 0
for d in "$HOME"/sky_logs/*/; do
  if [ "$(cat "${d}caddie-run-key" 2>/dev/null)" = "${CADDIE_RUN_KEY}" ]; then rm -rf "$d"; fi
done
rm -rf "$HOME/caddie-runs/${CADDIE_RUN_KEY}" "$HOME/caddie-scripts/${CADDIE_RUN_KEY}"
"""
_HARDWARE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]{0,39})(?::([1-9][0-9]{0,2}))?$")


def parse_hardware(hardware: str) -> tuple[str, int]:
    """'H100:8' -> ('H100', 8); 'H100' -> ('H100', 1). LaunchFailed on anything else."""
    m = _HARDWARE.match((hardware or "").strip())
    if not m:
        raise LaunchFailed(f"hardware {hardware!r} is not NAME:COUNT, e.g. H100:8 (count 1..999)")
    return m[1], int(m[2] or 1)


def hardware_slug(hardware: str) -> str:
    """A cluster-name-safe form: 'H100:8' -> 'h100x8'."""
    name, count = parse_hardware(hardware)
    return f"{re.sub(r'[^a-z0-9]', '', name.lower())}x{count}"


def parse_infra(infra: str) -> dict[str, str]:
    """'aws/us-east-1/us-east-1a' -> {cloud, region, zone}; '' -> {} (SkyPilot picks among enabled clouds).

    For Kubernetes the region is the kubeconfig context: 'kubernetes/my-context'.
    """
    parts = [p for p in (infra or "").strip().strip("/").split("/") if p]
    if len(parts) > 3:
        raise LaunchFailed(f"CADDIE_SKY_INFRA {infra!r} must be CLOUD[/REGION[/ZONE]]")
    return dict(zip(("cloud", "region", "zone"), parts, strict=False))


# --- SkyPilot's exceptions -> ours ------------------------------------------------

# Transient: another try later (maybe elsewhere) can succeed.
_RETRY = (
    "ResourcesUnavailableError",  # no capacity, quota exhausted in every region tried
    "KubeAPIUnreachableError",
    "ClusterNotUpError",  # stopped / preempted under us
    "ClusterDoesNotExist",  # torn down (autodown, preemption, a person)
    "ClusterStatusFetchingError",
    "FetchClusterInfoError",
    "NetworkError",
    "CloudError",  # a provider error wrapped by the API server (throttling, 5xx, ...)
    "CommandError",  # ssh/rsync to a node failed during provisioning
    "ProvisionPrechecksError",
    "RequestCancelled",
)
# Permanent: retrying the same run cannot succeed; the reason goes to the user.
_FAIL = (
    "NoCloudAccessError",  # `sky check` enabled no cloud
    "NotSupportedError",
    "InvalidClusterNameError",
    "ResourcesMismatchError",
    "InvalidCloudConfigs",
    "InvalidCloudCredentials",
    "InvalidSkyPilotConfigError",
    "CloudUserIdentityError",
    "ClusterOwnerIdentityMismatchError",
    "UserRequestRejectedByPolicy",
    "ClusterSetUpError",
    "StorageError",
    "StorageSpecError",
    "APIVersionMismatchError",
)
_UNREACHABLE = ("ApiServerConnectionError",)


# Terminal escape sequences (colours, cursor moves) that SkyPilot's messages carry: a
# run's reason is read in a browser and a database, not a terminal.
_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


def plain(text: str) -> str:
    """`text` without terminal escape sequences, and its whitespace runs as single spaces."""
    return " ".join(_ESCAPES.sub("", text).split())


def _class_names(exc: BaseException) -> list[str]:
    return [c.__name__ for c in type(exc).__mro__]


# What an SDK call may raise: its errors, and SystemExit, which SkyPilot's own checks end with (`sky check`
# enabling no cloud raises SystemExit() after printing why; the API server hands it back to the client's
# sky.get). Caught so that a worker thread is never ended by it: the run gets a reason instead.
SDK_ERRORS = (Exception, SystemExit)


def _exit_error(exc: SystemExit, what: str) -> LaunchFailed:
    """A SystemExit out of the SDK, as the permanent error it stands for (a check that failed), with
    SkyPilot's message where it gave one (its argument), else where to read it."""
    said = plain(str(exc.code)) if isinstance(exc.code, str) else ""
    code = "" if exc.code is None or said else f" (exit code {exc.code})"
    why = said or "SkyPilot ended the call with no message (it prints why on the API server's console; `sky check` there says whether any cloud is enabled)"
    return LaunchFailed(f"{what}: SystemExit{code}: {why[:1000]}")


def map_sky_error(exc: BaseException, what: str = "SkyPilot") -> LauncherError:
    """The RetryLater / LaunchFailed / LauncherUnreachable that stands for a SkyPilot exception.

    Matched by class name along the MRO, so the mapping holds for the classes the
    API server re-creates on the client, and needs no import of sky here.
    """
    if isinstance(exc, LauncherError):
        return exc
    if isinstance(exc, SystemExit):
        return _exit_error(exc, what)
    names = _class_names(exc)
    msg = f"{what}: {type(exc).__name__}: {plain(str(exc))[:1000]}"
    if "ResourcesUnavailableError" in names and "KubeAPIUnreachableError" not in names and not getattr(exc, "failover_history", None):
        # SkyPilot's contract: an empty failover history means the optimizer found
        # no enabled cloud that offers these resources at all, so waiting won't help.
        return LaunchFailed(f"{msg} (no enabled cloud/infra offers these resources; check `sky check` and CADDIE_SKY_INFRA)")
    if any(n in names for n in _UNREACHABLE):
        return LauncherUnreachable(msg)
    if any(n in names for n in _RETRY):
        return RetryLater(msg)
    if any(n in names for n in _FAIL):
        return LaunchFailed(msg)
    if "ValidationError" in names or "ValueError" in names or "KeyError" in names or "TypeError" in names:
        return LaunchFailed(msg)  # an invalid task or argument (jsonschema, Task/Resources checks)
    if "ConnectionError" in names or "Timeout" in names or "TimeoutError" in names:
        return LauncherUnreachable(msg)  # requests' errors talking to the API server
    return RetryLater(msg)


def names_task(body: str, name: str) -> bool:
    """Whether a launch/exec request's body (as sky.api_status lists it: its payload as JSON, the task a
    YAML string in it) is the task named `name`. Exactly that name: run 5's clean-up job
    (caddie-clean-run-5-attempt-1) or run 15's (caddie-run-15-...) is not run 5's job. A body of another
    shape is searched for the name as a whole word."""
    try:
        # The SDK sends its task as a chain DAG's YAML: one document naming the DAG, then the task's own.
        docs = list(yaml.safe_load_all(json.loads(body)["task"]))
        return any(isinstance(doc, dict) and doc.get("name") == name for doc in docs)
    except (ValueError, KeyError, TypeError, yaml.YAMLError):
        return re.search(rf"(?<![A-Za-z0-9-]){re.escape(name)}(?![A-Za-z0-9-])", body) is not None


# SkyPilot job states (sky.JobStatus values) -> ours
_JOB_STATES = {
    "INIT": JobState.PENDING,
    "PENDING": JobState.PENDING,
    "SETTING_UP": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "FAILED_SETUP": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    # The driver died: the node went away under the job (preemption, hardware).
    "FAILED_DRIVER": JobState.LOST,
}
_JOB_REASONS = {
    "FAILED": "the trainer exited with a non-zero code (see the log)",
    "FAILED_SETUP": "setup failed on the node (install or data download; see the log)",
    "FAILED_DRIVER": "the job's driver died: the node was preempted or failed",
    "CANCELLED": "cancelled",
}


def job_status_from_sky(status: Any) -> JobStatus:
    """A sky.JobStatus (or its value; None = no such job) as our JobStatus."""
    if status is None:
        return JobStatus(JobState.LOST, reason="SkyPilot has no record of this job")
    value = getattr(status, "value", status)
    state = _JOB_STATES.get(str(value))
    if state is None:
        return JobStatus(JobState.RUNNING, reason=f"unknown SkyPilot job status {value}")
    exit_code = 0 if state == JobState.SUCCEEDED else None
    return JobStatus(state, exit_code, _JOB_REASONS.get(str(value), ""))


class SkyPilotLauncher:
    """Launcher over SkyPilot's client SDK. `sdk` is the `sky` module (lazily imported)."""

    name = NAME

    def __init__(self, settings: Any, sdk: Any = None, min_poll_s: float | None = None) -> None:
        self.settings = settings
        self.prefix = settings.sky_cluster_prefix
        self.template_path = Path(settings.sky_task_template or DEFAULT_TEMPLATE)
        self._sdk = sdk
        self._job_ids: dict[str, int] = {}  # request id -> job id, once known
        # Each status/log poll is a round trip to the API server (and the log is
        # fetched whole), so answers are reused for this long, however fast the
        # executor polls.
        self.min_poll_s = float(min_poll_s if min_poll_s is not None else settings.sky_poll_s)
        self._status_cache: dict[str, tuple[float, JobStatus]] = {}
        self._log_cache: dict[str, tuple[float, bytes]] = {}

    @property
    def sky(self) -> Any:
        if self._sdk is None:
            try:
                import sky
            except ImportError as exc:
                raise LaunchFailed("the SkyPilot launcher needs the `skypilot` extra: pip install 'caddie[skypilot]'") from exc
            self._sdk = sky
        return self._sdk

    def _get(self, request_id: str, what: str) -> Any:
        try:
            return self.sky.get(request_id)
        except SDK_ERRORS as exc:  # every SDK error becomes one of ours
            raise map_sky_error(exc, what) from exc

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Send one SDK request and wait for its result, mapping errors."""
        try:
            request_id = fn(*args, **kwargs)
        except SDK_ERRORS as exc:
            raise map_sky_error(exc, what) from exc
        return self._get(request_id, what)

    # --- the task -------------------------------------------------------------------
    def task_config(self, job: JobSpec, run_key: str) -> dict[str, Any]:
        """The task template with this job's name, resources, envs and workdir filled in (plain dict)."""
        s = self.settings
        try:
            config = yaml.safe_load(self.template_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise LaunchFailed(f"cannot read the SkyPilot task template {self.template_path}: {exc}") from exc
        config = copy.deepcopy(config)
        name, count = parse_hardware(job.hardware or s.sky_hardware)
        resources = dict(config.get("resources") or {})
        resources["accelerators"] = f"{name}:{count}"
        resources["disk_size"] = s.sky_disk_size_gb
        resources.update(parse_infra(s.sky_infra))
        if s.sky_use_spot:
            resources["use_spot"] = True
        config["resources"] = resources
        config["name"] = self.job_name(run_key)  # what sky.queue lists as the job's name: find() looks for it

        envs = {str(k): str(v) for k, v in (config.get("envs") or {}).items()}
        # The run's knobs only (worker.launchers.trainer_env), or a script run's env; the run
        # script sets DATA_PATH, TOKENIZER_PATH and OUTPUT_DIR on the node from CADDIE_DATA_*.
        recipe = recipe_of(job.data_variant, s.data_sources, trainer=not job.is_script)
        run_env = script_env(job.env, recipe) if job.is_script else knob_env(job.env)
        envs.update({k: v for k, v in run_env.items() if k not in ("DATA_PATH", "TOKENIZER_PATH")})
        paths = data_env(recipe, run_env)
        envs["CADDIE_DATA_PATH"], envs["CADDIE_TOKENIZER_PATH"] = paths["DATA_PATH"], paths["TOKENIZER_PATH"]
        envs["CADDIE_DATA_SOURCES"] = s.data_sources
        # A built recipe's folder under the node's data root (built/<content hash>), '' for a downloaded one.
        if recipe.run_files() and not job.is_script:
            raise LaunchFailed(f"data {recipe.variant} is built by a run's own files; the shared trainer cannot use it")
        envs["CADDIE_DATA_TRAINER"] = "" if job.is_script else "1"  # the shared trainer's own recipe of the variant
        try:
            digest = content_hash(recipe, job.script_files)
        except RecipeError as exc:
            raise LaunchFailed(str(exc)) from None
        envs["CADDIE_DATA_KEY"] = digest[:16]
        envs["CADDIE_DATA_FOLDER"] = built_folder(digest) if recipe.built else ""
        # A script run's declared environment: the node builds it before the job (worker.launchers.envs, apt for
        # its system packages there) and runs the job's Python from it; "" runs the node's own python3.
        envs["CADDIE_ENV_SPEC"] = json.dumps(job.environment, sort_keys=True) if job.environment else ""
        if job.is_script:
            # The files go up with the task; the run script copies them into the run folder.
            staging = Path(s.runs_dir).resolve() / "sky-scripts" / run_key
            place_files(staging, job.script_files)
            config["file_mounts"] = {**(config.get("file_mounts") or {}), f"~/caddie-scripts/{run_key}": str(staging)}
            envs["CADDIE_SCRIPT"] = "1"
        envs["CADDIE_RUN_KEY"] = run_key
        envs["CADDIE_DATA_VARIANT"] = job.data_variant
        envs["CADDIE_TRAIN_SHARDS"] = str(s.sky_data_shards)
        envs["CADDIE_INSTALL_SPEC"] = s.sky_install_spec
        envs["CADDIE_TIMEOUT_S"] = str(max(0, int(job.timeout_s or 0)))  # GNU timeout: 0 = no limit
        envs["CADDIE_IDLE_TIMEOUT_S"] = f"{float(getattr(s, 'idle_timeout_s', 0.0)):g}"  # the node's hang watch, as on the local launcher
        envs["CADDIE_COMPILE_CACHE_BYTES"] = str(int(getattr(s, "compile_cache_bytes", 0)))  # the team's compile cache on its node
        config["envs"] = envs
        if s.sky_install_spec:
            config.pop("workdir", None)
        else:
            config["workdir"] = str(Path(s.sky_workdir or REPO_ROOT).resolve())
        return config

    def build_task(self, job: JobSpec, run_key: str) -> Any:
        """A sky.Task checked by SkyPilot's own task schema, Task and Resources constructors.

        Not checked here: whether any cloud sells the accelerator. That needs
        SkyPilot's online catalog, and the API server checks it in `sky.launch`
        (a ValueError there becomes LaunchFailed).
        """
        config = self.task_config(job, run_key)
        try:
            task = self.sky.Task.from_yaml_config(config)
            task.validate_name()
            task.validate_run()
            task.expand_and_validate_workdir()
            task.expand_and_validate_file_mounts()
        except LauncherError:
            raise
        except SDK_ERRORS as exc:
            raise map_sky_error(exc, "invalid SkyPilot task") from exc
        return task

    # --- clusters --------------------------------------------------------------------
    def cluster_name(self, run_id: int, hardware: str, team_id: int | None = None) -> str:
        """'caddie-h100x8-t3-12': the node of run 12 of team 3 (the team in the name is what reuse matches)."""
        team = "" if team_id is None else f"t{int(team_id)}-"
        return f"{self.prefix}-{hardware_slug(hardware)}-{team}{int(run_id)}"

    def _cluster_hardware(self, name: str) -> str:
        """Best-effort inverse of cluster_name: 'caddie-h100x8-t3-12' -> 'H100:8'."""
        m = re.match(rf"^{re.escape(self.prefix)}-([a-z0-9]+)x(\d+)-(?:t\d+-)?\d+(?:-r\d+)?$", name)
        return f"{m[1].upper()}:{m[2]}" if m else ""

    def _records(self, refresh: bool = False) -> list[dict[str, Any]]:
        # AUTO asks the clouds about clusters with autostop (all of ours) so a node
        # that already downed itself is not picked for reuse; NONE is the cheap local view.
        mode = self.sky.StatusRefreshMode.AUTO if refresh else self.sky.StatusRefreshMode.NONE
        records = self._call("sky.status", self.sky.status, None, refresh=mode)
        return [r for r in records if str(r.get("name", "")).startswith(f"{self.prefix}-")]

    def _is_idle(self, name: str) -> bool:
        jobs = self._call("sky.queue", self.sky.queue, name, skip_finished=True)
        return not jobs

    def acquire(self, run_id: int, hardware: str, exclude: Collection[str] = (), team_id: int | None = None) -> ClusterHandle:
        """An idle warm cluster of this hardware that this team warmed (not in `exclude`), else a new name.

        A warm node keeps what its runs left on it (SkyPilot's log folders, pip caches), so it
        serves only the team in its name; a run of no known team never reuses one. "Idle" is
        what SkyPilot says now; the executor then claims the cluster in the database (a
        compare-and-set), so two runs never take the same one.
        """
        hardware = hardware or self.settings.sky_hardware
        slug = hardware_slug(hardware)
        records = self._records(refresh=team_id is not None)
        if team_id is not None:
            mine = f"{self.prefix}-{slug}-t{int(team_id)}-"
            for rec in records:
                status = getattr(rec.get("status"), "value", rec.get("status"))
                name = rec["name"]
                if name in exclude:
                    continue
                if status == "UP" and name.startswith(mine) and self._is_idle(name):
                    return ClusterHandle(NAME, name, hardware, {"reused": True})
        return ClusterHandle(NAME, self.fresh_name(run_id, hardware, team_id, {str(r.get("name")) for r in records}), hardware, {"reused": False})

    def fresh_name(self, run_id: int, hardware: str, team_id: int | None, taken: Collection[str]) -> str:
        """The run's cluster name, or with -r2, -r3... when SkyPilot still lists one of that name (what is left
        of a node that died under an earlier attempt): `sky.launch` on an existing name would restart that
        cluster where it was, with its old resources; a new name is a fresh node, wherever capacity is."""
        base = self.cluster_name(run_id, hardware, team_id)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-r{n}"
        return name

    def node_hardware(self, cluster: ClusterHandle) -> NodeHardware:
        """At launch, what SkyPilot provisioned: the cluster's accelerator and count (SkyPilot launches
        exactly that or fails). Its name is only the accelerator's (``H100``); once the outputs come
        back, the node's own ``nvidia-smi -L`` (``node_report``) replaces it, model and count."""
        name, count = parse_hardware(cluster.hardware or self.settings.sky_hardware)
        return NodeHardware(name, count, "SkyPilot cluster resources")

    def list_clusters(self) -> list[ClusterHandle]:
        out = []
        for rec in self._records():
            status = getattr(rec.get("status"), "value", rec.get("status"))
            out.append(
                ClusterHandle(
                    NAME,
                    rec["name"],
                    self._cluster_hardware(rec["name"]),
                    {"status": str(status), "launched_at": rec.get("launched_at"), "autostop": rec.get("autostop"), "to_down": rec.get("to_down")},
                )
            )
        return out

    def release(self, cluster: ClusterHandle, keep_warm: bool) -> None:
        try:
            if keep_warm:
                # The node downs itself once idle for the keep-warm window (the janitor also watches it).
                minutes = max(1, int(self.settings.keep_warm_minutes))
                self._call("sky.autostop", self.sky.autostop, cluster.name, minutes, down=True)
            else:
                self._call("sky.down", self.sky.down, cluster.name)
        except RetryLater as exc:
            if "ClusterDoesNotExist" in str(exc):
                return  # already gone: what release wanted
            raise

    # --- jobs ----------------------------------------------------------------------------
    def job_name(self, run_key: str) -> str:
        """'caddie-run-12-attempt-1': the task's name, so the job's, in the cluster's queue."""
        return f"{self.prefix}-{run_key}"

    def submit(self, cluster: ClusterHandle, job: JobSpec) -> LaunchHandle:
        # The attempt's launch key, fixed in the database before this call, names the job, its
        # folders and its launch request, so that find() can tell it apart after a worker restart.
        run_key = job.launch_key or f"run-{int(job.run_id)}-{uuid.uuid4().hex[:8]}"
        task = self.build_task(job, run_key)
        s = self.settings
        try:
            if cluster.data.get("reused"):
                request_id = self.sky.exec(task, cluster_name=cluster.name)
                kind = "exec"
            else:
                request_id = self.sky.launch(
                    task,
                    cluster_name=cluster.name,
                    idle_minutes_to_autostop=int(s.sky_idle_minutes_to_autostop),
                    down=True,
                    retry_until_up=False,
                )
                kind = "launch"
        except SDK_ERRORS as exc:
            raise map_sky_error(exc, "submitting to SkyPilot") from exc
        return LaunchHandle(
            launcher=NAME,
            cluster=cluster.name,
            job_id="",  # known once the request finishes provisioning; status() resolves it
            data={"request_id": str(request_id), "request": kind, "run_key": run_key, "output_dir": f"~/caddie-runs/{run_key}"},
        )

    def find(self, run_id: int, launch_key: str, cluster: ClusterHandle | None = None) -> LaunchHandle | None:
        """The job that a submit with `launch_key` started on `cluster` (the run's recorded one), or None.

        Looked for where it can be while its executor is gone: a `sky.launch`/`sky.exec` request of
        that cluster still running (the node is being provisioned: no job yet; its request id is
        adopted, and status() resolves the job as for a fresh submit), then the cluster's job queue,
        finished jobs included (`sky.queue`, by the task's name). In that order, a request that
        finishes between the two looks has already put its job in the queue.
        LauncherUnreachable: the API server cannot say; the caller must not launch meanwhile.
        """
        if not launch_key or cluster is None:
            return None
        name = self.job_name(launch_key)
        try:
            pending = self.sky.api_status(None, False)  # the unfinished requests
        except SDK_ERRORS as exc:
            raise map_sky_error(exc, "sky.api_status") from exc
        data = {"run_key": launch_key, "output_dir": f"~/caddie-runs/{launch_key}"}
        for req in pending or []:
            kind = str(getattr(req, "name", "")).rsplit(".", 1)[-1]
            if kind not in ("launch", "exec") or getattr(req, "cluster_name", None) != cluster.name:
                continue
            body = str(getattr(req, "request_body", "") or "")
            if not body:
                # Any request of the node could be it (an earlier run's clean-up job, sky.exec'd there too):
                # never adopted unnamed, and nothing launched while it is there; it ends within moments.
                raise LauncherUnreachable(f"SkyPilot lists {kind} request {req.request_id} on {cluster.name} without its body: "
                                          f"cannot tell whether it is {name}")  # fmt: skip
            if names_task(body, name):
                return LaunchHandle(NAME, cluster.name, "", {"request_id": str(req.request_id), "request": kind, **data})
        try:
            jobs = self._call("sky.queue", self.sky.queue, cluster.name, skip_finished=False)
        except RetryLater:
            return None  # the cluster is not up or does not exist: no job of it runs
        for rec in jobs or []:
            if rec.get("job_name") == name:
                return LaunchHandle(NAME, cluster.name, str(rec["job_id"]), {"request_id": "", "request": "adopted", **data})
        return None

    def _job_id(self, handle: LaunchHandle) -> int | None:
        """The SkyPilot job id of this handle, or None while its launch request is still running.

        Raises RetryLater / LaunchFailed when the launch request itself failed.
        """
        if handle.job_id:
            return int(handle.job_id)
        request_id = handle.data["request_id"]
        if request_id in self._job_ids:
            return self._job_ids[request_id]
        try:
            payloads = self.sky.api_status([request_id])
        except SDK_ERRORS as exc:
            raise map_sky_error(exc, "sky.api_status") from exc
        state = str(payloads[0].status) if payloads else "SUCCEEDED"  # unknown: let get() tell
        state = state.rsplit(".", 1)[-1]
        if state in ("PENDING", "RUNNING"):
            return None
        if state == "CANCELLED":
            raise RetryLater(f"SkyPilot {handle.data.get('request')} request {request_id} was cancelled")
        what = f"sky.{handle.data.get('request', 'launch')}"
        try:
            job_id, _ = self.sky.get(request_id)
        except SDK_ERRORS as exc:
            if what == "sky.exec" and type(exc) is ValueError:
                # sky.exec's ValueError means the warm cluster is no longer UP: try again elsewhere
                raise RetryLater(f"{what}: cluster {handle.cluster} is no longer UP: {exc}") from exc
            raise map_sky_error(exc, what) from exc
        if job_id is None:
            raise LaunchFailed(f"SkyPilot {handle.data.get('request')} on {handle.cluster} submitted no job")
        self._job_ids[request_id] = int(job_id)
        handle.job_id = str(job_id)  # callers that store the handle again keep the resolved id
        return int(job_id)

    @staticmethod
    def _key(handle: LaunchHandle) -> str:
        return f"{handle.cluster}/{handle.data.get('request_id') or handle.job_id}"

    def _fresh(self, cache: dict[str, tuple[float, Any]], key: str) -> Any:
        hit = cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.min_poll_s:
            return hit[1]
        return None

    def status(self, handle: LaunchHandle) -> JobStatus:
        key = self._key(handle)
        cached = self._fresh(self._status_cache, key)
        if cached is not None:
            return cached
        status = self._status_now(handle)
        self._status_cache[key] = (time.monotonic(), status)
        return status

    def _status_now(self, handle: LaunchHandle) -> JobStatus:
        job_id = self._job_id(handle)
        if job_id is None:
            return JobStatus(JobState.PENDING, reason="provisioning")
        try:
            statuses = self._call("sky.job_status", self.sky.job_status, handle.cluster, [job_id])
        except RetryLater as exc:
            # the cluster is stopped or gone under a job that did not finish: preempted or torn down
            return JobStatus(JobState.LOST, reason=f"cluster {handle.cluster} is gone ({exc})")
        status = job_status_from_sky(statuses.get(job_id))
        if status.state == JobState.FAILED:
            detail = self._failure_line(handle.cluster, job_id)
            if detail:
                status.reason = f"{status.reason}: {detail}"
        return status

    def _failure_line(self, cluster: str, job_id: int) -> str:
        """The telling line of a failed job's last log lines ('' if the log cannot be read)."""
        buf = io.StringIO()
        try:
            self.sky.tail_logs(cluster, job_id, follow=False, tail=200, output_stream=buf)
        except SDK_ERRORS:  # the reason is a nicety; the state is what matters
            return ""
        return failure_reason(buf.getvalue())

    def read_log(self, handle: LaunchHandle, offset: int) -> bytes:
        key = self._key(handle)
        data = self._fresh(self._log_cache, key)
        if data is None:
            data = self._whole_log(handle)
            self._log_cache[key] = (time.monotonic(), data)
        return data[max(0, int(offset)) :]

    def _whole_log(self, handle: LaunchHandle) -> bytes:
        try:
            job_id = self._job_id(handle)
        except (RetryLater, LaunchFailed):
            return b""  # the launch failed: no job, no log; status() says why, once
        if job_id is None:
            return b""
        buf = io.StringIO()
        try:
            self.sky.tail_logs(handle.cluster, job_id, follow=False, output_stream=buf)
        except SDK_ERRORS as exc:
            err = map_sky_error(exc, "sky.tail_logs")
            if isinstance(err, RetryLater):
                return b""  # cluster gone: status() reports it; nothing more to read
            raise err from exc
        # The whole log each time, so byte offsets stay stable while it grows.
        return buf.getvalue().encode("utf-8")

    def cancel(self, handle: LaunchHandle) -> None:
        request_id = handle.data.get("request_id")
        self._status_cache.pop(self._key(handle), None)  # the next status() must see the cancel
        try:
            job_id = self._job_id(handle)
        except (RetryLater, LaunchFailed):
            return  # the launch failed: there is no job to stop
        if job_id is None:
            try:
                self.sky.api_cancel(request_id, silent=True)
            except SDK_ERRORS as exc:
                raise map_sky_error(exc, "sky.api_cancel") from exc
            return
        try:
            self._call("sky.cancel", self.sky.cancel, handle.cluster, job_ids=[job_id])
        except RetryLater:
            return  # the cluster is gone, and the job with it

    def collect(self, handle: LaunchHandle, dest: Path) -> Path:
        """Fetch the job's log folder (with OUTPUT_DIR copied into it by the run script) into dest."""
        job_id = self._job_id(handle)
        if job_id is None:
            raise RetryLater("collect before the job exists")
        try:
            paths = self.sky.download_logs(handle.cluster, [str(job_id)])
        except SDK_ERRORS as exc:
            raise map_sky_error(exc, "sky.download_logs") from exc
        local = paths.get(str(job_id)) or paths.get(job_id)  # type: ignore[call-overload]
        src = Path(str(local)).expanduser() / "caddie-output" if local else None
        if src is None or not src.is_dir():
            raise LaunchFailed(f"job {job_id} on {handle.cluster} left no outputs (no caddie-output in its logs)")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest, dirs_exist_ok=True)
        run_log = Path(str(local)).expanduser() / "run.log"
        if run_log.exists() and not (dest / "stdout.log").exists():
            shutil.copyfile(run_log, dest / "stdout.log")
        # The node's own `nvidia-smi -L` and its Python's report (written by the run script outside the
        # job's reach) go beside the outputs; a file of either name from the job never stands for the node.
        for name in (NODE_REPORT, ENV_REPORT):
            report = Path(str(local)).expanduser() / name
            (dest / name).unlink(missing_ok=True)
            if report.is_file():
                shutil.copyfile(report, dest / name)
        shutil.rmtree(Path(str(local)).expanduser(), ignore_errors=True)  # the worker's download: its outputs are in dest now
        return dest

    def discard_log(self, handle: LaunchHandle) -> None:
        """Once the run has ended (its outputs collected), what it left on the node goes: its SkyPilot log folder
        (the log, the outputs copied there, the node's reports), its run folder and its script files, by a small
        job on the node (`sky.exec` of CLEANUP_RUN); and the worker's staged copy of its script files.
        Best effort: a node already down took them with it, and a node's next run removes what is left."""
        run_key = str(handle.data.get("run_key") or "")
        if not _RUN_KEY.fullmatch(run_key):
            log.warning("not cleaning %s: no run key in the handle (%r)", handle.cluster, run_key)
            return
        shutil.rmtree(Path(self.settings.runs_dir).resolve() / "sky-scripts" / run_key, ignore_errors=True)
        try:
            task = self.sky.Task(name=f"{self.prefix}-clean-{run_key}", run=CLEANUP_RUN, envs={"CADDIE_RUN_KEY": run_key})
            self._call("sky.exec", self.sky.exec, task, cluster_name=handle.cluster)
        except (LauncherError, ValueError) as exc:  # ValueError: sky.exec's "cluster is not up"
            log.info("run key %s: the node %s was not cleaned (%s); its next run removes what is left", run_key, handle.cluster, exc)

    def environment(self, handle: LaunchHandle, outdir: Path) -> dict[str, Any] | None:
        """What the job's Python held, as the run script read it on the node before the job (None: no report)."""
        try:
            data = json.loads((Path(outdir) / ENV_REPORT).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def node_report(self, outdir: Path) -> NodeHardware | None:
        """What the node's `nvidia-smi -L` listed, from the outputs ``collect`` fetched (None: no report,
        e.g. a job from before the run script wrote one); it replaces the provisioned accelerator."""
        try:
            text = (Path(outdir) / NODE_REPORT).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        node = parse_gpu_list(text, source="nvidia-smi -L on the node")
        return node if node.gpus > 0 else None  # no GPU line: nvidia-smi failed there; the provisioned one stands
