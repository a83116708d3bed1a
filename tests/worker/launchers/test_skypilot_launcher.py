"""SkyPilot launcher up to the SDK boundary: real sky.Task / Resources validation and real
sky.exceptions classes; the few network calls of the SDK are answered by a stand-in, since no
cloud and no SkyPilot API server are reachable from here."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sky = pytest.importorskip("sky")
from sky import exceptions as sky_exc  # noqa: E402

from service.core.hardware import NodeHardware  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.runs.logparse import failure_reason  # noqa: E402
from worker.launchers import get_launcher
from worker.launchers.base import (  # noqa: E402
    ClusterHandle,
    JobSpec,
    JobState,
    LauncherUnreachable,
    LaunchFailed,
    LaunchHandle,
    RetryLater,
)
from worker.launchers.skypilot import (  # noqa: E402
    NODE_REPORT,
    SkyPilotLauncher,
    hardware_slug,
    job_status_from_sky,
    map_sky_error,
    parse_hardware,
)

REPO = Path(__file__).resolve().parents[3]


def spec(run_id: int = 5, hardware: str = "", **env: str) -> JobSpec:
    return JobSpec(run_id=run_id, env={"NUM_LAYERS": "11", **env}, hardware=hardware, timeout_s=1800)


def launcher(tmp_path: Path, sdk: Any = None, min_poll_s: float = 0.0, **overrides: Any) -> SkyPilotLauncher:
    return SkyPilotLauncher(Settings(home=tmp_path, **overrides), sdk=sdk, min_poll_s=min_poll_s)


# --- the task ---------------------------------------------------------------------


def test_a_script_run_uploads_its_files_and_runs_train_gpt_under_torchrun(tmp_path: Path) -> None:
    files = {"train_gpt.py": b"print('hi')\n", "tokenizers/own.model": b"\x00\x01"}
    job = JobSpec(run_id=5, env={"SEED": "42", "RUN_ID": "caddie-run-5", "NUM_LAYERS": "$(rm -rf ~)"}, hardware="", timeout_s=1800,
                  data_variant="sp8192", script_files=files)
    task = launcher(tmp_path).build_task(job, "run-5-abcd")
    staging = tmp_path / "runs" / "sky-scripts" / "run-5-abcd"
    assert task.file_mounts == {"~/caddie-scripts/run-5-abcd": str(staging.resolve())}
    assert (staging / "train_gpt.py").read_bytes() == files["train_gpt.py"] and (staging / "tokenizers/own.model").read_bytes() == b"\x00\x01"
    assert task.envs["CADDIE_SCRIPT"] == "1" and task.envs["CADDIE_DATA_VARIANT"] == "sp8192"
    assert task.envs["SEED"] == "42" and task.envs["NUM_LAYERS"] == "$(rm -rf ~)"  # a value: SkyPilot quotes it on export
    assert "train_gpt.py\n" in task.run and 'cp -a "$HOME/caddie-scripts/${CADDIE_RUN_KEY}"/. "$out/"' in task.run
    with pytest.raises(LaunchFailed, match="LD_PRELOAD"):
        launcher(tmp_path).build_task(JobSpec(run_id=5, env={"LD_PRELOAD": "x"}, hardware="", timeout_s=1, script_files=files), "k")



def test_task_from_the_template_defaults_to_8xH100_and_carries_the_knobs(tmp_path: Path) -> None:
    task = launcher(tmp_path).build_task(spec(VE_LAYERS="$(touch /tmp/pwned) ; rm -rf ~"), "run-5-abcd")
    assert isinstance(task, sky.Task)
    assert task.name == "caddie-run-5-abcd"  # the run key names the job in the cluster's queue
    (res,) = task.resources
    assert res.accelerators == {"H100": 8} and res.cloud is None and res.disk_size == 256
    assert task.envs["NUM_LAYERS"] == "11"
    assert task.envs["VE_LAYERS"] == "$(touch /tmp/pwned) ; rm -rf ~"  # a value: SkyPilot shlex-quotes it on export
    assert task.envs["CADDIE_RUN_KEY"] == "run-5-abcd" and task.envs["CADDIE_TRAIN_SHARDS"] == "80"
    assert task.envs["CADDIE_TIMEOUT_S"] == "1800" and 'timeout --signal=TERM --kill-after=30 "${CADDIE_TIMEOUT_S}"' in task.run
    assert task.workdir == str(REPO)  # this checkout is synced and pip-installed by setup
    assert "torchrun --standalone --nproc_per_node=\"${SKYPILOT_NUM_GPUS_PER_NODE}\" -m trainer" in task.run
    assert "python3 -m trainer.data download" in task.setup and "marker" in task.setup
    assert "$HOME/caddie-runs/${CADDIE_RUN_KEY}" in task.run


def test_hardware_infra_spot_and_shards_come_from_the_run_and_settings(tmp_path: Path) -> None:
    sp = launcher(tmp_path, sky_infra="aws/us-east-1", sky_use_spot=True, sky_data_shards=8, sky_disk_size_gb=100)
    (res,) = sp.build_task(spec(hardware="A100-80GB:4"), "k").resources
    assert res.accelerators == {"A100-80GB": 4}
    assert str(res.cloud) == "AWS" and res.region == "us-east-1" and res.use_spot and res.disk_size == 100
    assert sp.build_task(spec(), "k").envs["CADDIE_TRAIN_SHARDS"] == "8"
    (k8s,) = launcher(tmp_path, sky_infra="kubernetes").build_task(spec(), "k").resources
    assert str(k8s.cloud) == "Kubernetes"


def test_paths_are_decided_on_the_node_from_the_data_variant(tmp_path: Path) -> None:
    job = spec(OUTPUT_DIR="/somewhere/else", DATA_PATH="/etc", TOKENIZER_PATH="/etc/passwd")
    job.data_variant = "sp4096"
    envs = launcher(tmp_path).build_task(job, "k").envs
    assert not {"OUTPUT_DIR", "DATA_PATH", "TOKENIZER_PATH"} & set(envs)
    assert envs["CADDIE_DATA_VARIANT"] == "sp4096"


def test_the_shared_trainer_on_caseops_data_builds_caddies_own_recipe_on_the_node(tmp_path: Path) -> None:
    from trainer.recipes import built_folder, content_hash, resolve

    job = spec(CASEOPS_ENABLED="1")
    job.data_variant = "sp8192_caseops"
    envs = launcher(tmp_path).build_task(job, "k").envs
    assert envs["CADDIE_DATA_TRAINER"] == "1"
    assert envs["CADDIE_DATA_FOLDER"] == built_folder(content_hash(resolve("sp8192_caseops", trainer=True)))
    assert envs["CADDIE_DATA_PATH"] == "./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"


def test_an_install_spec_replaces_the_workdir(tmp_path: Path) -> None:
    task = launcher(tmp_path, sky_install_spec="caddie[gpu] @ git+https://example.org/caddie@v1").build_task(spec(), "k")
    assert task.workdir is None
    assert task.envs["CADDIE_INSTALL_SPEC"] == "caddie[gpu] @ git+https://example.org/caddie@v1"


@pytest.mark.parametrize(
    ("hardware", "infra", "env", "message"),
    [
        ("H100:x", "", {}, "hardware 'H100:x' is not NAME:COUNT"),
        ("H100:0", "", {}, "is not NAME:COUNT"),
        ("8xH100 please", "", {}, "is not NAME:COUNT"),
        ("H100:8", "nocloud", {}, "'nocloud' is not one of"),  # SkyPilot's own resources schema
        ("H100:8", "aws/a/b/c", {}, "CLOUD[/REGION[/ZONE]]"),
        ("H100:8", "", {"BAD NAME": "1"}, "is not a trainer knob"),
        ("H100:8", "", {"CADDIE_RUN_KEY": "x"}, "is not a trainer knob"),
        ("H100:8", "", {"LD_PRELOAD": "/tmp/x.so"}, "is not a trainer knob"),
    ],
)
def test_invalid_tasks_are_clear_launch_failures(tmp_path: Path, hardware: str, infra: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchFailed, match=message.replace("[", r"\[").replace("(", r"\(")):
        launcher(tmp_path, sky_infra=infra).build_task(spec(hardware=hardware, **env), "k")


def test_a_broken_template_is_caught_by_skypilots_schema(tmp_path: Path) -> None:
    template = tmp_path / "task.yaml"
    template.write_text("name: x\nresourcez:\n  accelerators: H100:8\nrun: echo\n")
    with pytest.raises(LaunchFailed, match="resourcez"):
        launcher(tmp_path, sky_task_template=template).build_task(spec(), "k")


def test_hardware_helpers() -> None:
    assert parse_hardware("H100:8") == ("H100", 8) and parse_hardware("L4") == ("L4", 1)
    assert hardware_slug("A100-80GB:8") == "a10080gbx8"


# --- errors ------------------------------------------------------------------------

ERROR_CASES = [
    (sky_exc.ResourcesUnavailableError("no H100:8 in us-east-1", failover_history=[RuntimeError("InsufficientInstanceCapacity")]), RetryLater),
    (sky_exc.ResourcesUnavailableError("quota", failover_history=[sky_exc.CloudError("VcpuLimitExceeded", "aws", "ClientError")]), RetryLater),
    (sky_exc.ResourcesUnavailableError("no feasible resources for H999:8"), LaunchFailed),  # empty history: nobody sells it
    (sky_exc.KubeAPIUnreachableError("k8s api down"), RetryLater),
    (sky_exc.ClusterNotUpError("stopped", cluster_status=sky.ClusterStatus.STOPPED), RetryLater),
    (sky_exc.ClusterDoesNotExist("caddie-h100x8-5 does not exist"), RetryLater),
    (sky_exc.CloudError("Request limit exceeded", "aws", "ClientError"), RetryLater),
    (sky_exc.CommandError(255, "ssh node", "connection reset", None), RetryLater),
    (sky_exc.NoCloudAccessError("no cloud enabled; run sky check"), LaunchFailed),
    (sky_exc.NotSupportedError("not supported"), LaunchFailed),
    (sky_exc.InvalidClusterNameError("bad name"), LaunchFailed),
    (sky_exc.ResourcesMismatchError("existing cluster has A100"), LaunchFailed),
    (sky_exc.InvalidCloudCredentials("expired"), LaunchFailed),
    (sky_exc.ClusterOwnerIdentityMismatchError("other user"), LaunchFailed),
    (ValueError("Invalid task YAML"), LaunchFailed),
    (sky_exc.ApiServerConnectionError("http://127.0.0.1:46580"), LauncherUnreachable),
]


@pytest.mark.parametrize(("exc", "expected"), ERROR_CASES, ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(ERROR_CASES)])
def test_skypilot_errors_map_to_retry_or_fail(exc: Exception, expected: type) -> None:
    mapped = map_sky_error(exc, "sky.launch")
    assert type(mapped) is expected
    assert type(exc).__name__ in str(mapped) and str(mapped).startswith("sky.launch: ")


@pytest.mark.parametrize(("exc", "expected"), ERROR_CASES[:-1], ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(ERROR_CASES[:-1])])
def test_mapping_holds_for_errors_as_the_api_server_sends_them(exc: Exception, expected: type) -> None:
    # what `sky.get` re-raises on the client after the server serialised the error
    again = sky_exc.deserialize_exception(sky_exc.serialize_exception(exc))
    assert type(again) is type(exc)
    assert type(map_sky_error(again)) is expected


def test_every_skypilot_job_state_has_a_meaning() -> None:
    seen = {s.value: job_status_from_sky(s) for s in sky.JobStatus}
    assert not [v for v, st in seen.items() if st.reason.startswith("unknown")]
    assert seen["SUCCEEDED"].state == JobState.SUCCEEDED and seen["SUCCEEDED"].exit_code == 0
    assert seen["FAILED_SETUP"].state == JobState.FAILED and "setup" in seen["FAILED_SETUP"].reason
    assert seen["FAILED_DRIVER"].state == JobState.LOST and "preempted" in seen["FAILED_DRIVER"].reason
    assert seen["SETTING_UP"].state == JobState.PENDING and seen["CANCELLED"].state == JobState.CANCELLED
    assert job_status_from_sky(None).state == JobState.LOST


# --- the flow over an SDK stand-in ------------------------------------------------------


class SkyApiStandIn:
    """Answers the SDK's network calls like a SkyPilot API server would; Task and errors are real."""

    Task = sky.Task

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.requests: dict[str, dict[str, Any]] = {}  # id -> {"status", "result" | "error"}
        self.clusters: list[dict[str, Any]] = []
        self.queues: dict[str, list] = {}
        self.job_statuses: dict[int, Any] = {}
        self.job_status_error: Exception | None = None
        self.queue_error: Exception | None = None
        self.api_error: Exception | None = None
        self.log = ""
        self.logs_dir: Path | None = None

    def _request(self, name: str, result: Any = None, status: str = "SUCCEEDED", error: Exception | None = None, cluster: str | None = None,
                 body: str = "") -> str:  # fmt: skip
        rid = f"req-{len(self.requests) + 1}-{name}"
        self.requests[rid] = {"status": status, "result": result, "error": error, "name": name, "cluster": cluster, "body": body}
        return rid

    def _job_request(self, name: str, task: Any, cluster: str, job_id: int, status: str) -> str:
        # The request's body as the API server lists it: its payload as JSON, the task within as the SDK sends it
        # (a chain DAG's YAML, made by SkyPilot's own function).
        from sky.utils import dag_utils

        body = json.dumps({"task": dag_utils.dump_chain_dag_to_yaml_str(dag_utils.convert_entrypoint_to_dag(task)), "cluster_name": cluster})
        rid = self._request(name, (job_id, None), status=status, cluster=cluster, body=body)
        self.requests[rid]["job"] = {"job_id": job_id, "job_name": task.name, "status": sky.JobStatus.PENDING}
        if status == "SUCCEEDED":
            self.finish(rid)
        return rid

    def finish(self, rid: str, job_status: Any = None) -> None:
        """The launch/exec request is done: its job is in the cluster's queue (as SkyPilot adds it)."""
        req = self.requests[rid]
        req["status"] = "SUCCEEDED"
        job = dict(req["job"], status=job_status or sky.JobStatus.RUNNING)
        self.queues.setdefault(req["cluster"], []).append(job)
        self.job_statuses[job["job_id"]] = job["status"]

    def launch(self, task: Any, **kw: Any) -> str:
        self.calls.append(("launch", (task,), kw))
        return self._job_request("launch", task, kw["cluster_name"], 3, status="RUNNING")

    def exec(self, task: Any, **kw: Any) -> str:
        self.calls.append(("exec", (task,), kw))
        return self._job_request("exec", task, kw["cluster_name"], 4, status="SUCCEEDED")

    def api_status(self, ids: list[str] | None = None, all_status: bool = False) -> list[Any]:
        if self.api_error:
            raise self.api_error
        if ids is None:  # every unfinished request (all_status=False)
            ids = [i for i, r in self.requests.items() if all_status or r["status"] in ("PENDING", "RUNNING")]
        return [SimpleNamespace(request_id=i, name=self.requests[i]["name"], status=self.requests[i]["status"],
                                cluster_name=self.requests[i]["cluster"], request_body=self.requests[i]["body"]) for i in ids]  # fmt: skip

    def get(self, rid: str) -> Any:
        req = self.requests[rid]
        if req["error"] is not None:
            raise req["error"]
        return req["result"]

    StatusRefreshMode = sky.StatusRefreshMode

    def status(self, names: Any = None, refresh: Any = None) -> str:
        self.calls.append(("status", (names,), {"refresh": refresh}))
        return self._request("status", self.clusters)

    def queue(self, name: str, skip_finished: bool = False) -> str:
        if self.queue_error:
            return self._request("queue", error=self.queue_error)
        jobs = [dict(j, status=self.job_statuses.get(j["job_id"], j["status"])) for j in self.queues.get(name, [])]
        if skip_finished:
            jobs = [j for j in jobs if not j["status"].is_terminal()]
        return self._request("queue", jobs)

    def job_status(self, cluster: str, job_ids: list[int]) -> str:
        if self.job_status_error:
            return self._request("job_status", error=self.job_status_error)
        return self._request("job_status", {j: self.job_statuses.get(j) for j in job_ids})

    def tail_logs(self, cluster: str, job_id: int, follow: bool, output_stream: Any, tail: int = 0) -> int:
        lines = self.log.splitlines(keepends=True)
        output_stream.write("".join(lines[-tail:] if tail else lines))
        return 0

    def cancel(self, cluster: str, job_ids: list[int]) -> str:
        self.calls.append(("cancel", (cluster,), {"job_ids": job_ids}))
        return self._request("cancel")

    def api_cancel(self, rid: str, silent: bool = False) -> str:
        self.calls.append(("api_cancel", (rid,), {}))
        return self._request("api_cancel")

    def download_logs(self, cluster: str, job_ids: list[str]) -> dict[str, str]:
        # A fresh local copy of the node's log folder each time, as the SDK downloads one.
        assert self.logs_dir is not None
        local = self.logs_dir.parent / f"{self.logs_dir.name}-download-{len(self.requests)}"
        shutil.copytree(self.logs_dir, local)
        return {job_ids[0]: str(local)}

    def autostop(self, cluster: str, minutes: int, down: bool = False) -> str:
        self.calls.append(("autostop", (cluster, minutes), {"down": down}))
        return self._request("autostop")

    def down(self, cluster: str) -> str:
        self.calls.append(("down", (cluster,), {}))
        if any(c["name"] == cluster for c in self.clusters):
            self.clusters = [c for c in self.clusters if c["name"] != cluster]
            return self._request("down")
        return self._request("down", error=sky_exc.ClusterDoesNotExist(f"{cluster} does not exist"))


def test_launch_returns_a_handle_before_provisioning_and_status_resolves_it(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    sp = launcher(tmp_path, api, sky_idle_minutes_to_autostop=20)
    cluster = sp.acquire(5, "H100:8")
    assert cluster == ClusterHandle("skypilot", "caddie-h100x8-5", "H100:8", {"reused": False})
    handle = sp.submit(cluster, spec())
    name, (task,), kw = api.calls[-1]
    assert name == "launch" and kw == {"cluster_name": "caddie-h100x8-5", "idle_minutes_to_autostop": 20, "down": True, "retry_until_up": False}
    assert task.envs["CADDIE_RUN_KEY"] == handle.data["run_key"]
    assert handle.job_id == "" and handle.data["request_id"]

    stored = json.dumps(handle.to_json())
    assert sp.status(handle).state == JobState.PENDING  # still provisioning
    assert sp.read_log(handle, 0) == b""

    api.requests[handle.data["request_id"]]["status"] = "SUCCEEDED"
    api.job_statuses[3] = sky.JobStatus.RUNNING
    fresh = SkyPilotLauncher(sp.settings, sdk=api, min_poll_s=0)  # a restarted worker, from the stored handle
    restored = LaunchHandle.from_json(json.loads(stored))
    assert fresh.status(restored).state == JobState.RUNNING and restored.job_id == "3"

    api.log = "step:1/9000 train_loss:6.9 train_time:83ms step_avg:83.00ms\nCode size: 1 bytes\n"
    assert fresh.read_log(restored, 0) == api.log.encode()
    assert fresh.read_log(restored, 10) == api.log.encode()[10:]

    api.job_statuses[3] = sky.JobStatus.SUCCEEDED
    assert fresh.status(restored).state == JobState.SUCCEEDED
    fresh.cancel(restored)
    assert api.calls[-1] == ("cancel", ("caddie-h100x8-5",), {"job_ids": [3]})


def test_a_restarted_worker_finds_the_job_its_launch_key_named_and_nothing_else(tmp_path: Path) -> None:
    """Issue 21 item 2: the attempt's launch key names the SkyPilot job; a worker that died before
    recording the handle is followed by one that finds the launch request, then the job."""
    api = SkyApiStandIn()
    sp = launcher(tmp_path, api)
    cluster = sp.acquire(5, "H100:8", team_id=1)
    job = spec(run_id=5)
    job.launch_key = "run-5-attempt-1"
    handle = sp.submit(cluster, job)
    (_, (task,), _) = api.calls[-1]
    assert task.name == "caddie-run-5-attempt-1" and task.envs["CADDIE_RUN_KEY"] == "run-5-attempt-1"
    assert handle.data["output_dir"] == "~/caddie-runs/run-5-attempt-1"
    # another run's launch on another cluster, and run 15 (whose name contains run 5's) on this one: not ours
    other = spec(run_id=15)
    other.launch_key = "run-15-attempt-1"
    sp.submit(ClusterHandle("skypilot", "caddie-h100x8-t1-9", "H100:8", {"reused": True}), other)

    fresh = launcher(tmp_path, api)  # the restarted worker: nothing in memory
    found = fresh.find(5, "run-5-attempt-1", cluster)
    assert found is not None and found.job_id == "" and found.data["request_id"] == handle.data["request_id"]  # still provisioning
    assert fresh.status(found).state == JobState.PENDING
    assert fresh.find(5, "run-5-attempt-2", cluster) is None  # the next attempt's key: nothing started for it
    assert fresh.find(5, "run-5-attempt-1", None) is None  # no cluster recorded: nothing was submitted

    api.finish(handle.data["request_id"])  # provisioned: the job is in the cluster's queue
    found = launcher(tmp_path, api).find(5, "run-5-attempt-1", cluster)
    assert found is not None and found.job_id == "3" and found.data["run_key"] == "run-5-attempt-1"
    api.job_statuses[3] = sky.JobStatus.SUCCEEDED  # a finished job is found too, to be collected
    adopted = launcher(tmp_path, api).find(5, "run-5-attempt-1", cluster)
    assert adopted is not None and launcher(tmp_path, api).status(adopted).state == JobState.SUCCEEDED
    assert [c[0] for c in api.calls].count("launch") == 1  # finding launches nothing

    api.queue_error = sky_exc.ClusterDoesNotExist(f"{cluster.name} does not exist")
    assert launcher(tmp_path, api).find(5, "run-5-attempt-1", cluster) is None  # its node is gone, and its job with it
    api.api_error = sky_exc.ApiServerConnectionError("http://127.0.0.1:46580")
    with pytest.raises(LauncherUnreachable):  # cannot tell: the caller must not launch a second one meanwhile
        launcher(tmp_path, api).find(5, "run-5-attempt-1", cluster)


def test_find_never_takes_a_clean_up_job_or_a_request_it_cannot_read_for_the_attempt(tmp_path: Path) -> None:
    """A warm node's earlier run ended and its clean-up job (discard_log: sky.exec on the node) is still being
    submitted when the next run's executor, restarted, looks for that run's job there: the clean-up is not it,
    whether listed with its body (another task's name) or without one (then find cannot tell: it says so, and
    nothing is launched meanwhile, rather than adopting whatever runs on the node)."""
    api = SkyApiStandIn()
    sp = launcher(tmp_path, api)
    cluster = ClusterHandle("skypilot", "caddie-h100x8-t1-5", "H100:8", {"reused": True})
    done = LaunchHandle("skypilot", cluster.name, "4", {"request_id": "r", "run_key": "run-5-attempt-1"})
    sp.discard_log(done)  # run 5 ended: its clean-up is sky.exec'd on the node
    [(rid, clean)] = [(i, r) for i, r in api.requests.items() if r["name"] == "exec"]
    assert "caddie-clean-run-5-attempt-1" in clean["body"]
    clean["status"] = "RUNNING"  # still being submitted
    assert launcher(tmp_path, api).find(6, "run-6-attempt-1", cluster) is None  # run 6 (warm node, same cluster) started nothing
    assert launcher(tmp_path, api).find(5, "run-5-attempt-1", cluster) is None  # nor is the clean-up run 5's job, though it carries its key
    clean["body"] = ""  # a server that lists requests without their bodies
    with pytest.raises(LauncherUnreachable, match="without its body"):
        launcher(tmp_path, api).find(6, "run-6-attempt-1", cluster)
    clean["status"] = "SUCCEEDED"  # submitted: the clean-up job is in the queue, under its own name
    assert [j["job_name"] for j in api.queues[cluster.name]] == ["caddie-clean-run-5-attempt-1"]
    assert launcher(tmp_path, api).find(5, "run-5-attempt-1", cluster) is None
    # run 6's own exec on the node is found, while its request runs and once its job is queued
    job = spec(run_id=6)
    job.launch_key = "run-6-attempt-1"
    mine = sp.submit(cluster, job)
    api.requests[mine.data["request_id"]]["status"] = "RUNNING"
    found = launcher(tmp_path, api).find(6, "run-6-attempt-1", cluster)
    assert found is not None and found.data["request_id"] == mine.data["request_id"]
    api.requests[mine.data["request_id"]]["status"] = "SUCCEEDED"
    found = launcher(tmp_path, api).find(6, "run-6-attempt-1", cluster)
    assert found is not None and found.job_id == "4" and found.data["request"] == "adopted"
    assert rid != mine.data["request_id"]


class ExitingStandIn(SkyApiStandIn):
    """SkyPilot's checks end with SystemExit (`sky check` enabling no cloud): here every call of the SDK does."""

    def __init__(self, exit_with: SystemExit) -> None:
        super().__init__()
        self.exit_with = exit_with

    def __getattribute__(self, name: str) -> Any:
        if name in ("launch", "exec", "api_status", "queue", "job_status", "tail_logs", "cancel", "api_cancel", "download_logs", "autostop", "down", "status", "get"):
            def exits(*args: Any, **kw: Any) -> Any:
                raise object.__getattribute__(self, "exit_with")

            return exits
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("exit_with", [SystemExit(), SystemExit("\x1b[31mNo cloud is enabled.\x1b[0m Run `sky check`"), SystemExit(2)])
def test_a_system_exit_out_of_the_sdk_is_a_launch_error_with_its_message_never_the_end_of_the_worker(tmp_path: Path, exit_with: SystemExit) -> None:
    sp = launcher(tmp_path, ExitingStandIn(exit_with))
    cluster = ClusterHandle("skypilot", "caddie-h100x8-5", "H100:8", {"reused": False})
    handle = LaunchHandle("skypilot", cluster.name, "3", {"request_id": "r", "run_key": "run-5-attempt-1"})
    said = {None: "SkyPilot ended the call with no message", 2: "(exit code 2)"}.get(exit_with.code, "No cloud is enabled. Run `sky check`")  # type: ignore[call-overload]
    calls = [("submitting to SkyPilot", lambda: sp.submit(cluster, spec())), ("sky.status", lambda: sp.acquire(5, "H100:8", team_id=1)),
             ("sky.api_status", lambda: sp.find(5, "run-5-attempt-1", cluster)), ("sky.job_status", lambda: sp.status(handle)),
             ("sky.tail_logs", lambda: sp.read_log(handle, 0)), ("sky.cancel", lambda: sp.cancel(handle)),
             ("sky.download_logs", lambda: sp.collect(handle, tmp_path / "out")), ("sky.down", lambda: sp.release(cluster, keep_warm=False))]  # fmt: skip
    for what, call in calls:
        with pytest.raises(LaunchFailed) as raised:
            call()
        assert str(raised.value).startswith(f"{what}: SystemExit") and said in str(raised.value) and "\x1b" not in str(raised.value), (what, raised.value)
    sp.discard_log(handle)  # best effort: no error at all


def test_a_failed_launch_request_becomes_retry_later_or_launch_failed(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    sp = launcher(tmp_path, api)
    handle = sp.submit(sp.acquire(6, ""), spec(run_id=6))
    rid = handle.data["request_id"]
    api.requests[rid].update(status="FAILED", error=sky_exc.ResourcesUnavailableError("no capacity", failover_history=[RuntimeError("x")]))
    with pytest.raises(RetryLater, match="no capacity"):
        sp.status(handle)
    api.requests[rid].update(error=sky_exc.NoCloudAccessError("No cloud is enabled"))
    with pytest.raises(LaunchFailed, match="No cloud is enabled"):
        sp.status(handle)
    sp.cancel(handle)  # nothing to cancel after a failed launch: no error


def test_exec_into_a_cluster_that_went_down_meanwhile_is_retry_later(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    sp = launcher(tmp_path, api)
    handle = sp.submit(ClusterHandle("skypilot", "caddie-h100x8-4", "H100:8", {"reused": True}), spec(run_id=8))
    api.requests[handle.data["request_id"]].update(status="FAILED", error=ValueError("Cluster 'caddie-h100x8-4' is not up"))
    with pytest.raises(RetryLater, match="no longer UP"):
        sp.status(handle)


def test_cancel_while_provisioning_cancels_the_request(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    sp = launcher(tmp_path, api)
    handle = sp.submit(sp.acquire(7, ""), spec(run_id=7))
    sp.cancel(handle)
    assert api.calls[-1] == ("api_cancel", (handle.data["request_id"],), {})


def test_an_idle_warm_cluster_is_reused_through_exec(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    api.clusters = [
        {"name": "caddie-h100x8-t1-1", "status": sky.ClusterStatus.UP},  # busy
        {"name": "caddie-a100x8-t1-2", "status": sky.ClusterStatus.UP},  # other hardware
        {"name": "caddie-h100x8-t1-3", "status": sky.ClusterStatus.STOPPED},
        {"name": "caddie-h100x8-t2-5", "status": sky.ClusterStatus.UP},  # idle, another team's: never
        {"name": "caddie-h100x8-t12-6", "status": sky.ClusterStatus.UP},  # team 12 is not team 1
        {"name": "caddie-h100x8-t1-4", "status": sky.ClusterStatus.UP},  # idle, this team's: this one
        {"name": "someone-elses", "status": sky.ClusterStatus.UP},
    ]
    api.queues["caddie-h100x8-t1-1"] = [{"job_id": 1, "status": sky.JobStatus.RUNNING}]
    sp = launcher(tmp_path, api)
    cluster = sp.acquire(9, "H100:8", team_id=1)
    assert (cluster.name, cluster.data) == ("caddie-h100x8-t1-4", {"reused": True})
    assert ("status", (None,), {"refresh": sky.StatusRefreshMode.AUTO}) in api.calls  # no stale UP clusters
    handle = sp.submit(cluster, spec(run_id=9))
    assert api.calls[-1][0] == "exec" and api.calls[-1][2] == {"cluster_name": "caddie-h100x8-t1-4"}
    api.job_statuses[4] = sky.JobStatus.FAILED_SETUP
    api.log = "Collecting torch\nERROR: No matching distribution found for torch\n"
    st = sp.status(handle)
    assert st.state == JobState.FAILED and "setup failed" in st.reason and "No matching distribution" in st.reason
    assert [c.name for c in sp.list_clusters()][:3] == ["caddie-h100x8-t1-1", "caddie-a100x8-t1-2", "caddie-h100x8-t1-3"]
    assert sp.list_clusters()[1].hardware == "A100:8"


def test_a_warm_node_serves_only_the_team_that_warmed_it(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    api.clusters = [{"name": "caddie-h100x8-t1-4", "status": sky.ClusterStatus.UP}]  # idle, warmed by team 1
    sp = launcher(tmp_path, api)
    other = sp.acquire(10, "H100:8", team_id=2)
    assert (other.name, other.data) == ("caddie-h100x8-t2-10", {"reused": False})  # a node of its own
    assert sp.acquire(11, "H100:8").data == {"reused": False}  # no team known: no warm node
    assert sp.acquire(12, "H100:8", team_id=1).name == "caddie-h100x8-t1-4"


def test_a_new_node_never_takes_the_name_of_what_is_left_of_a_dead_one(tmp_path: Path) -> None:
    """Issue 21 item 7: sky.launch on a name SkyPilot still lists restarts that cluster where it was;
    a relaunch after a lost node gets a name of its own, so a fresh node wherever capacity is."""
    api = SkyApiStandIn()
    api.clusters = [{"name": "caddie-h100x8-t1-5", "status": sky.ClusterStatus.STOPPED},  # a preempted spot node, not yet down
                    {"name": "caddie-h100x8-t1-5-r2", "status": sky.ClusterStatus.INIT}]  # fmt: skip
    sp = launcher(tmp_path, api)
    cluster = sp.acquire(5, "H100:8", team_id=1)
    assert (cluster.name, cluster.data) == ("caddie-h100x8-t1-5-r3", {"reused": False})
    assert sp._cluster_hardware(cluster.name) == "H100:8"
    assert sp.acquire(6, "H100:8", team_id=1).name == "caddie-h100x8-t1-6"
    api.clusters = []
    assert sp.acquire(5, "H100:8", team_id=1).name == "caddie-h100x8-t1-5"


def test_a_cluster_gone_under_a_running_job_is_lost(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    sp = launcher(tmp_path, api)
    handle = LaunchHandle("skypilot", "caddie-h100x8-5", "3", {"request_id": "r", "request": "launch"})
    api.job_status_error = sky_exc.ClusterNotUpError("cluster is STOPPED", cluster_status=sky.ClusterStatus.STOPPED)
    st = sp.status(handle)
    assert st.state == JobState.LOST and "caddie-h100x8-5 is gone" in st.reason


def test_fast_polling_is_answered_from_a_short_cache(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    sp = launcher(tmp_path, api, min_poll_s=60)
    handle = LaunchHandle("skypilot", "caddie-h100x8-5", "3", {"request_id": "r", "request": "launch"})
    api.job_statuses[3] = sky.JobStatus.RUNNING
    api.log = first = "step:1/9 train_loss:6.9 train_time:8ms step_avg:8.00ms\n"
    assert sp.status(handle).state == JobState.RUNNING and sp.read_log(handle, 0) == first.encode()
    api.job_statuses[3] = sky.JobStatus.SUCCEEDED
    api.log += "step:2/9 train_loss:6.5 train_time:16ms step_avg:8.00ms\n"
    n = len(api.requests)
    assert sp.status(handle).state == JobState.RUNNING  # within min_poll_s: no new request
    assert sp.read_log(handle, 10) == first.encode()[10:]  # the log as fetched a moment ago
    assert len(api.requests) == n
    sp.cancel(handle)
    assert sp.status(handle).state == JobState.SUCCEEDED  # cancel forgets the cached status


def test_collect_copies_the_outputs_that_came_back_with_the_logs(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    api.logs_dir = tmp_path / "sky_logs" / "sky-2026-11-24-03-00-00-000000"
    (api.logs_dir / "caddie-output").mkdir(parents=True)
    (api.logs_dir / "caddie-output" / "result.json").write_text('{"status": "succeeded"}')
    (api.logs_dir / "run.log").write_text("step:1/1 ...\n")
    sp = launcher(tmp_path, api)
    handle = LaunchHandle("skypilot", "caddie-h100x8-5", "3", {"request_id": "r"})
    out = sp.collect(handle, tmp_path / "collected")
    assert json.loads((out / "result.json").read_text()) == {"status": "succeeded"}
    assert (out / "stdout.log").read_text() == "step:1/1 ...\n"

    assert sp.node_report(out) is None  # no report from the node: the provisioned accelerator stands

    # the node's own nvidia-smi -L, beside the job's log; a file of that name from the job is not it
    (api.logs_dir / "caddie-output" / NODE_REPORT).write_text("GPU 0: NVIDIA H200 (UUID: forged)\n")
    assert sp.node_report(sp.collect(handle, tmp_path / "forged")) is None
    (api.logs_dir / NODE_REPORT).write_text("".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})\n" for i in range(8)))
    assert sp.node_report(sp.collect(handle, tmp_path / "reported")) == NodeHardware("NVIDIA H100 80GB HBM3", 8, "nvidia-smi -L on the node")
    (api.logs_dir / "caddie-output" / NODE_REPORT).unlink()

    (api.logs_dir / "caddie-output" / "result.json").unlink()
    (api.logs_dir / "caddie-output").rmdir()
    with pytest.raises(LaunchFailed, match="left no outputs"):
        sp.collect(handle, tmp_path / "again")


def test_collect_leaves_no_download_on_the_worker(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    api.logs_dir = tmp_path / "sky_logs" / "sky-2026-12-06-22-00-00-000000"
    (api.logs_dir / "caddie-output").mkdir(parents=True)
    (api.logs_dir / "caddie-output" / "result.json").write_text('{"status": "succeeded"}')
    out = launcher(tmp_path, api).collect(LaunchHandle("skypilot", "caddie-h100x8-5", "3", {"request_id": "r"}), tmp_path / "collected")
    assert (out / "result.json").exists()
    assert sorted(p.name for p in (tmp_path / "sky_logs").iterdir()) == [api.logs_dir.name]  # the node's (here: the stand-in's) only


class GoneNodeStandIn(SkyApiStandIn):
    def exec(self, task: Any, **kw: Any) -> str:
        self.calls.append(("exec", (task,), kw))
        return self._request("exec", error=sky_exc.ClusterDoesNotExist(f"{kw['cluster_name']} does not exist"))


def test_once_the_run_has_ended_its_folders_on_the_node_go(tmp_path: Path) -> None:
    """discard_log's job on the node, run by bash there after the template's run script: this run's log folder
    (log, outputs, reports), run folder and script files go; another run's stay; so do the worker's staged files."""
    api = SkyApiStandIn()
    sp = launcher(tmp_path / "worker", api)
    files = {"train_gpt.py": b"print('hi')\n"}
    job = JobSpec(run_id=5, env={"SEED": "1"}, hardware="", timeout_s=60, script_files=files, launch_key="run-5-attempt-1")
    handle = sp.submit(sp.acquire(5, ""), job)
    (_, (task,), _) = api.calls[-1]
    staged = tmp_path / "worker" / "runs" / "sky-scripts" / "run-5-attempt-1"
    assert staged.is_dir()
    # The node: this run's script files arrive by file_mounts, then its run script runs the job.
    trains = 'echo model > model.int6.ptz; echo "{}" > result.json'
    env = {**_node(tmp_path, {"python3": PYTHON3, "torchrun": trains, "nvidia-smi": 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"'}), **task.envs}
    home = Path(env["HOME"])
    shutil.copytree(staged, home / "caddie-scripts" / "run-5-attempt-1")
    env.update(SKYPILOT_NUM_GPUS_PER_NODE="1", SKYPILOT_TASK_ID="sky-2026-12-06-22-00-00-000001_caddie-x_3")
    assert _run_script(task.run, env, tmp_path).returncode == 0
    mine = home / "sky_logs" / "sky-2026-12-06-22-00-00-000001"
    assert (mine / "caddie-output" / "model.int6.ptz").exists() and (mine / "caddie-run-key").read_text() == "run-5-attempt-1\n"
    # What another run of the node left (a later one, or one whose clean-up never ran) is not this run's to remove.
    other = home / "sky_logs" / "sky-2026-12-06-23-00-00-000002"
    (other / "caddie-output").mkdir(parents=True)
    (other / "caddie-run-key").write_text("run-6-attempt-1\n")
    (home / "caddie-runs" / "run-6-attempt-1").mkdir(parents=True)
    (home / "caddie-runs" / "run-5-attempt-1").mkdir(parents=True)  # as if its run script had died before its own rm
    (home / "caddie-scripts" / "run-5-attempt-1").mkdir(parents=True)

    sp.discard_log(handle)
    name, (clean,), kw = api.calls[-1]
    assert name == "exec" and kw == {"cluster_name": handle.cluster} and clean.envs == {"CADDIE_RUN_KEY": "run-5-attempt-1"}
    assert not staged.exists()  # the worker's staged copy
    res = _run_script(clean.run, {**env, **clean.envs}, tmp_path)
    assert res.returncode == 0, res.stderr
    assert not mine.exists() and not (home / "caddie-runs" / "run-5-attempt-1").exists() and not (home / "caddie-scripts" / "run-5-attempt-1").exists()
    assert (other / "caddie-output").is_dir() and (home / "caddie-runs" / "run-6-attempt-1").is_dir()
    # Without a run key the script removes nothing (an empty key would match every folder without one).
    assert _run_script(clean.run, {**env, "CADDIE_RUN_KEY": ""}, tmp_path).returncode == 0 and other.is_dir()


def test_a_node_already_down_or_a_handle_without_a_run_key_is_not_an_error(tmp_path: Path) -> None:
    api = GoneNodeStandIn()
    sp = launcher(tmp_path, api)
    sp.discard_log(LaunchHandle("skypilot", "caddie-h100x8-5", "3", {"request_id": "r", "run_key": "run-5-attempt-1"}))
    assert api.calls[-1][0] == "exec"  # asked, and the node was gone: fine
    n = len(api.calls)
    for key in ("", "..", "run-5/../..", "run-5-a b"):
        sp.discard_log(LaunchHandle("skypilot", "caddie-h100x8-5", "3", {"request_id": "r", "run_key": key}))
    assert len(api.calls) == n  # never a clean-up of folders it cannot name exactly


def test_release_keeps_warm_with_autodown_or_tears_down(tmp_path: Path) -> None:
    api = SkyApiStandIn()
    sp = launcher(tmp_path, api, keep_warm_minutes=7)
    cluster = ClusterHandle("skypilot", "caddie-h100x8-5", "H100:8", {})
    sp.release(cluster, keep_warm=True)
    assert api.calls[-1] == ("autostop", ("caddie-h100x8-5", 7), {"down": True})
    sp.release(cluster, keep_warm=False)  # the stand-in says it is already gone: fine
    assert api.calls[-1] == ("down", ("caddie-h100x8-5",), {})


def test_get_launcher_gives_the_skypilot_launcher(tmp_path: Path) -> None:
    assert isinstance(get_launcher("skypilot", Settings(home=tmp_path)), SkyPilotLauncher)


# --- the template's scripts, run by bash with stand-ins for the node's programs -----------


def _node(tmp_path: Path, programs: dict[str, str]) -> dict[str, str]:
    """A fake node: HOME under tmp_path, and PATH stand-ins that log their argv and do `programs[name]`."""
    import os

    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    for name, body in programs.items():
        exe = bin_dir / name
        exe.write_text(f'#!/bin/bash\necho "{name} $*" >> "{tmp_path}/calls.log"\n{body}\n')
        exe.chmod(0o755)
    return {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}


# The node's python3: `-m worker.launchers.sandbox ... -- ARGV` runs ARGV (unsealed; the real
# sandbox runs in test_a_job_on_a_node_is_sealed_and_leaves_nothing_behind); the job's wrapper (the hang
# watch) and `-c` are the real Python's; anything else does nothing.
PYTHON3 = ('if [ "$1 $2" = "-m worker.launchers.sandbox" ]; then while [ "$1" != "--" ]; do shift; done; shift; exec "$@"; fi; '
           f'if [ "$1 $2" = "-m worker.launchers.local_wrapper" ] || [ "$1" = "-c" ]; then PYTHONPATH={REPO} exec {sys.executable} "$@"; fi; exit 0')


def _run_script(script: str, env: dict[str, str], cwd: Path) -> Any:
    import subprocess

    return subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


def test_setup_installs_and_downloads_the_data_once_per_cluster(tmp_path: Path) -> None:
    task = launcher(tmp_path).build_task(spec(), "run-5-abcd")
    env = {**_node(tmp_path, {"python3": "exit 0"}), **task.envs}
    for _ in range(2):  # a second launch on the same cluster
        res = _run_script(task.setup, env, tmp_path)
        assert res.returncode == 0, res.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    download = f"trainer.data download --variant sp1024 --train-shards 80 --out {env['HOME']}/caddie-data/data"
    assert sum(download in c for c in calls) == 1
    assert any(c.startswith("python3 -m pip install --quiet -e .[gpu]") for c in calls)


def test_run_script_starts_torchrun_hands_back_outputs_and_keeps_the_exit_code(tmp_path: Path) -> None:
    task = launcher(tmp_path).build_task(spec(VE_LAYERS="$(touch pwned)"), "run-5-abcd")
    fake_torchrun = ('echo "name=$VE_LAYERS out=$OUTPUT_DIR data=$DATA_PATH tok=$TOKENIZER_PATH cwd=$PWD"; '
                     'echo "cache=$TORCHINDUCTOR_CACHE_DIR triton=$TRITON_CACHE_DIR"; echo "{}" > "$OUTPUT_DIR/result.json"; exit 3')
    smi = 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"'
    env = {**_node(tmp_path, {"torchrun": fake_torchrun, "python3": PYTHON3, "nvidia-smi": smi}), **task.envs}
    env.update(SKYPILOT_NUM_GPUS_PER_NODE="8", SKYPILOT_TASK_ID="sky-2026-11-24-03-00-00-123456_caddie-h100x8-5_3",
               TORCHINDUCTOR_CACHE_DIR="/shared/by/all")  # the node image's own: replaced by the team's
    res = _run_script(task.run, env, tmp_path)
    assert res.returncode == 3  # SkyPilot marks the job FAILED
    home = Path(env["HOME"])
    # the trainer runs in its output folder; its paths are relative (no node path in its log)
    assert (f"name=$(touch pwned) out=. data=./data/datasets/fineweb10B_sp1024 tok=./data/tokenizers/fineweb_1024_bpe.model "
            f"cwd={home}/caddie-runs/run-5-abcd") in res.stdout
    cache = home / "caddie-compile-cache"  # this node serves one team: its compile cache, kept between its runs
    assert f"cache={cache}/inductor triton={cache}/triton" in res.stdout and task.envs["CADDIE_COMPILE_CACHE_BYTES"] == str(20 * 1024**3)
    assert not (home / "caddie-runs" / "run-5-abcd").exists()  # the run folder goes once its outputs are copied
    assert not (tmp_path / "pwned").exists()
    calls = (tmp_path / "calls.log").read_text()
    assert (f"python3 -m worker.launchers.sandbox --die-with-parent --workdir {home}/caddie-runs/run-5-abcd --ro {home}/caddie-data "
            f"--ro {tmp_path} --rw {cache} -- torchrun --standalone --nproc_per_node=8 -m trainer") in calls  # sealed, the cache writable
    assert f"python3 -m worker.launchers.compile_cache {cache} {20 * 1024**3}" in calls  # trimmed before the job
    assert f"--grace 30 --shared {cache} -- timeout" in calls  # and held by the job's wrapper while it runs (no trim under it)
    out = home / "sky_logs" / "sky-2026-11-24-03-00-00-123456" / "caddie-output"
    assert (out / "result.json").exists() and not (out / "data").exists()  # the data link does not travel back
    # the node's GPUs, listed before the job started, beside (not inside) what the job hands back
    assert (out.parent / NODE_REPORT).read_text() == "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)\n"
    assert calls.index("nvidia-smi -L") < calls.index("torchrun")


def test_run_script_enforces_the_hard_timeout_on_the_node(tmp_path: Path) -> None:
    task = launcher(tmp_path).build_task(JobSpec(run_id=5, env={}, hardware="", timeout_s=1), "run-5-t")
    env = {**_node(tmp_path, {"torchrun": "sleep 20", "python3": PYTHON3}), **task.envs}
    env.update(SKYPILOT_NUM_GPUS_PER_NODE="8", SKYPILOT_TASK_ID="sky-2026-11-24-03-00-00-000001_c_1")
    res = _run_script(task.run, env, tmp_path)
    assert res.returncode == 124 and "caddie: hard timeout after 1 s" in res.stdout


def test_run_script_stops_a_hung_job_on_the_node_and_says_so(tmp_path: Path) -> None:
    import time

    task = launcher(tmp_path, idle_timeout_s=2).build_task(JobSpec(run_id=5, env={}, hardware="", timeout_s=300), "run-5-h")
    assert task.envs["CADDIE_IDLE_TIMEOUT_S"] == "2"
    hung = 'echo "step:1/9 train_loss:6.5 train_time:10ms step_avg:10.00ms"; sleep 60; echo "not stopped"'
    env = {**_node(tmp_path, {"torchrun": hung, "python3": PYTHON3}), **task.envs}
    env.update(SKYPILOT_NUM_GPUS_PER_NODE="8", SKYPILOT_TASK_ID="sky-2026-12-07-03-00-00-000001_c_1")
    t0 = time.monotonic()
    res = _run_script(task.run, env, tmp_path)
    assert time.monotonic() - t0 < 15  # not the 300 s hard timeout, nor the 600 s silence watchdog
    assert res.returncode == 137  # SIGKILL: SkyPilot marks the job FAILED
    assert "step:1/9" in res.stdout and "not stopped" not in res.stdout  # the job's output reached SkyPilot's log
    reason = failure_reason(res.stdout)  # what the launcher makes the run's reason
    assert reason.startswith("caddie: hung: no output for ") and "(CADDIE_IDLE_TIMEOUT_S=2); stopped" in reason, res.stdout


def test_a_sky_error_reason_carries_no_terminal_escapes() -> None:
    exc = RuntimeError("\x1b[31mFailed to provision\x1b[0m all possible launchable resources.\n  \x1b[1mReason:\x1b[0m quota\x1b]8;;http://x\x07")
    msg = str(map_sky_error(exc, "sky.launch"))
    assert "\x1b" not in msg and "\x07" not in msg
    assert msg == "sky.launch: RuntimeError: Failed to provision all possible launchable resources. Reason: quota"


NODE_ESCAPES = r"""
import json, os, sys
a = {}
def attempt(name, fn):
    try:
        fn()
        a[name] = "DONE"
    except Exception as exc:
        a[name] = "refused: " + type(exc).__name__
home = os.environ["NODE_HOME"]
attempt("write_data", lambda: open(home + "/caddie-data/data/poison", "w").write("x"))
attempt("write_python", lambda: open(os.path.join(sys.prefix, "caddie-was-here"), "w").write("x"))
attempt("read_sky_credentials", lambda: open(home + "/.sky/key").read())
attempt("read_earlier_run", lambda: open(home + "/caddie-runs/run-1-old/final_model.pt").read())
json.dump(a, open("escapes.json", "w"))
"""


@pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap is not installed")
def test_a_job_on_a_node_is_sealed_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """The template's run script on a fake node with the real python3, torchrun and bubblewrap."""
    import os
    import sys

    files = {"train_gpt.py": NODE_ESCAPES.encode()}
    job = JobSpec(run_id=5, env={}, hardware="cpu:1", timeout_s=120, script_files=files)
    task = launcher(tmp_path / "worker").build_task(job, "run-5-new")
    home = tmp_path / "home"
    (home / "caddie-data" / "data").mkdir(parents=True)
    (home / "caddie-data" / ".downloaded-sp1024-80").touch()
    (home / ".sky").mkdir()
    (home / ".sky" / "key").write_text("cloud credentials")
    (home / "caddie-runs" / "run-1-old").mkdir(parents=True)
    (home / "caddie-runs" / "run-1-old" / "final_model.pt").write_text("an earlier run's model")
    old_out = home / "sky_logs" / "sky-old" / "caddie-output"
    old_out.mkdir(parents=True)
    (old_out / "train_gpt.py").write_text("an earlier run's script")
    staged = home / "caddie-scripts" / "run-5-new"
    staged.mkdir(parents=True)
    (staged / "train_gpt.py").write_bytes(files["train_gpt.py"])
    code = tmp_path / "checkout"
    code.mkdir()
    env = {**task.envs, "HOME": str(home), "NODE_HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "SKYPILOT_NUM_GPUS_PER_NODE": "1", "SKYPILOT_TASK_ID": "sky-new_c_1"}
    res = _run_script(task.run, env, code)
    assert res.returncode == 0, res.stdout + res.stderr
    seen = json.loads((home / "sky_logs" / "sky-new" / "caddie-output" / "escapes.json").read_text())
    assert all(v.startswith("refused") for v in seen.values()), seen
    assert not (home / "caddie-data" / "data" / "poison").exists()
    # nothing of an earlier run or of this one is left but this run's outputs, for the worker to collect
    assert not (home / "caddie-runs").exists() or not any((home / "caddie-runs").iterdir())
    assert not staged.exists() and not old_out.exists()


# --- a script run's declared environment (issue 20 item 3) ------------------------------------
ENV_FILES = {"train_gpt.py": b"import tinypkg\n", "requirements.txt": b"tinypkg==1.2.3\n"}


def env_job() -> JobSpec:
    from service.runs.scripts.environment import describe

    return JobSpec(run_id=5, env={"SEED": "1"}, hardware="", timeout_s=1800, script_files=ENV_FILES,
                   environment=describe({"requirements": "requirements.txt", "python": "3.12", "system_packages": ["lrzip"]}, ENV_FILES))


# The node's python3 for these: the envs builder prints the environment's paths (or fails as uv would),
# the sandbox runs its command, the probe prints a report.
def _env_python3(envdir: Path, fail: str = "") -> str:
    build = (f'echo "caddie: the run\'s environment could not be built: uv pip install failed: {fail}" >&2; exit 1' if fail else
             f'mkdir -p {envdir}/bin; echo \'{{"python": "3.12.3", "packages": {{"tinypkg": "1.2.3"}}}}\' > {envdir}/caddie-env.json; '
             f'echo {envdir}; echo /opt/python-3.12')
    return (f'if [ "$1 $2" = "-m worker.launchers.envs" ]; then {build}; fi\n'
            'if [ "$1 $2" = "-m worker.launchers.env_probe" ]; then echo \'{"python": "3.11.2"}\'; exit 0; fi\n' + PYTHON3)


def test_a_declared_environment_is_built_on_the_node_before_the_job_and_runs_it(tmp_path: Path) -> None:
    job = env_job()
    task = launcher(tmp_path).build_task(job, "run-5-env")
    assert json.loads(task.envs["CADDIE_ENV_SPEC"]) == job.environment  # the description travels whole, its requirements inlined
    assert json.loads(task.envs["CADDIE_ENV_SPEC"])["requirements"] == "tinypkg==1.2.3\n"
    envdir = tmp_path / "home" / "caddie-envs" / "abc"
    fake_python = 'echo "ran $0 $*"; exit 0'
    env = {**_node(tmp_path, {"python3": _env_python3(envdir)}), **task.envs}
    env.update(SKYPILOT_NUM_GPUS_PER_NODE="8", SKYPILOT_TASK_ID="sky-2026-12-06-19-00-00-000001_c_1")
    (envdir / "bin").mkdir(parents=True)
    (envdir / "bin" / "python").write_text(f"#!/bin/bash\n{fake_python}\n")
    (envdir / "bin" / "python").chmod(0o755)
    res = _run_script(task.run, env, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    calls = (tmp_path / "calls.log").read_text()
    home = tmp_path / "home"
    assert f"python3 -m worker.launchers.envs --envs-dir {home}/caddie-envs --apt" in calls
    # sealed, its environment and that environment's Python read-only, the job's Python the environment's
    assert (f"python3 -m worker.launchers.sandbox --die-with-parent --workdir {home}/caddie-runs/run-5-env --ro {home}/caddie-data "
            f"--ro {tmp_path} --ro {envdir} --ro /opt/python-3.12 --rw {home}/caddie-compile-cache -- {envdir}/bin/python -m torch.distributed.run --standalone "
            f"--nproc_per_node=8 train_gpt.py") in calls
    assert f"ran {envdir}/bin/python -m torch.distributed.run --standalone --nproc_per_node=8 train_gpt.py" in res.stdout
    assert calls.index("worker.launchers.envs") < calls.index("worker.launchers.sandbox")
    # what it held comes back beside the outputs, where the job could not write it
    logdir = home / "sky_logs" / "sky-2026-12-06-19-00-00-000001"
    assert json.loads((logdir / "caddie-env.json").read_text())["packages"] == {"tinypkg": "1.2.3"}
    got = launcher(tmp_path).environment(LaunchHandle("skypilot", "c", "1"), logdir)
    assert got is not None and got["python"] == "3.12.3"


def test_an_environment_that_cannot_be_built_ends_the_run_before_training_saying_why(tmp_path: Path) -> None:
    task = launcher(tmp_path).build_task(env_job(), "run-5-bad")
    env = {**_node(tmp_path, {"python3": _env_python3(tmp_path / "x", fail="No solution found: nosuchpkg"), "torchrun": "exit 0"}), **task.envs}
    env.update(SKYPILOT_NUM_GPUS_PER_NODE="8", SKYPILOT_TASK_ID="sky-2026-12-06-19-00-00-000002_c_2")
    res = _run_script(task.run, env, tmp_path)
    assert res.returncode == 1
    assert "caddie: the run's environment could not be built: uv pip install failed: No solution found: nosuchpkg" in res.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "worker.launchers.sandbox" not in calls and "torchrun" not in calls  # no job, no training
    assert not (tmp_path / "home" / "caddie-runs" / "run-5-bad").exists()


def test_a_run_without_one_reports_the_nodes_own_python(tmp_path: Path) -> None:
    task = launcher(tmp_path).build_task(spec(), "run-5-own")
    assert task.envs["CADDIE_ENV_SPEC"] == ""
    env = {**_node(tmp_path, {"python3": _env_python3(tmp_path / "x"), "torchrun": "exit 0"}), **task.envs}
    env.update(SKYPILOT_NUM_GPUS_PER_NODE="8", SKYPILOT_TASK_ID="sky-2026-12-06-19-00-00-000003_c_3")
    assert _run_script(task.run, env, tmp_path).returncode == 0
    assert json.loads((tmp_path / "home" / "sky_logs" / "sky-2026-12-06-19-00-00-000003" / "caddie-env.json").read_text()) == {"python": "3.11.2"}


def test_the_node_builder_prints_what_the_job_needs_or_why_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The real `python -m worker.launchers.envs` (offline, from a local wheel; apt is not asked: nothing is missing)."""
    from service.runs.scripts.environment import describe
    from tests.wheels import make_wheel
    from worker.launchers import envs

    make_wheel(tmp_path / "wheels", "tinypkg", "1.2.3", {"tinypkg/__init__.py": ""})
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_FIND_LINKS", str(tmp_path / "wheels"))
    monkeypatch.setenv("CADDIE_ENV_SPEC", json.dumps(describe({"requirements": "r", "system_packages": ["coreutils"]}, {"r": b"tinypkg\n"})))
    assert envs.main(["--envs-dir", str(tmp_path / "envs"), "--apt"]) == 0
    folder, *others = capsys.readouterr().out.split()
    assert Path(folder).parent == tmp_path / "envs" and json.loads((Path(folder) / "caddie-env.json").read_text())["packages"]["tinypkg"] == "1.2.3"
    assert others and all(Path(p).is_dir() for p in others)  # its base Python's installation
    monkeypatch.setenv("CADDIE_ENV_SPEC", json.dumps(describe({"requirements": "r"}, {"r": b"nosuchpkg\n"})))
    assert envs.main(["--envs-dir", str(tmp_path / "envs")]) == 1
    assert "caddie: the run's environment could not be built: uv pip install failed:" in capsys.readouterr().err
