"""`caddie doctor` against real setups, healthy and broken: a real API and database, the
broker, a Celery worker and beat on a redis-server of the tests' own, bubblewrap, SkyPilot
as installed. Each check is shown failing on a real broken piece (a wrong broker URL, a
database behind head, a missing data folder, no worker, ...), with exit code 1 and its fix."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import update

from cli.doctor import check_job_wrapper, server_cannot_start
from cli.main import app as cli_app
from service.core.db import get_sessionmaker
from service.core.migrate import alembic_config, upgrade
from service.core.models import Run, StoredQueueEstimate, utcnow
from service.core.settings import Settings
from tests.cli.conftest import Caddie, closed_port_url, serve
from tests.cli.test_cli_scripts import ids_of
from tests.fresh_db import empty_database
from tests.redis_server import PrivateRedis, private_redis
from tests.sky_server import running_sky_server
from worker.control.forecast import refresh_forecast
from worker.embedded import DOCTOR_HINT, TOKEN_HINT
from worker.run.lease import Lease

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sp1024 in the layout `python -m trainer.data download` writes: a train and a val shard, the tokenizer."""
    root = tmp_path_factory.mktemp("data")
    shards = root / "datasets" / "fineweb10B_sp1024"
    shards.mkdir(parents=True)
    (shards / "fineweb_train_000000.bin").write_bytes(b"\0" * 1024)
    (shards / "fineweb_val_000000.bin").write_bytes(b"\0" * 1024)
    (root / "tokenizers").mkdir()
    (root / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(b"\0")
    return root


def doctor(caddie: Caddie, *args: str, **env: str | None) -> tuple[int, dict[str, Any]]:
    result = caddie.runner.invoke(cli_app, ["doctor", "--json", *args], env=caddie.env(**env))
    assert "Traceback" not in result.output, result.output
    report = json.loads(result.stdout)
    assert report["ok"] == (result.exit_code == 0), report
    return result.exit_code, {c["name"]: c for c in report["checks"]}


def healthy(caddie: Caddie, data_root: Path) -> dict[str, str]:
    return {"CADDIE_DATA_ROOT": str(data_root), "CADDIE_DATA_VARIANTS": "sp1024,sp8192_caseops"}


def beat_now(db_url: str, home: Path) -> None:
    """What the control worker does at each beat tick (worker.control.forecast): the heartbeat the scheduler check reads."""
    settings = Settings(home=home, database_url=db_url)
    with get_sessionmaker(db_url)() as session:
        refresh_forecast(session, settings)


def test_a_healthy_local_deployment_passes(caddie: Caddie, data_root: Path) -> None:
    beat_now(caddie.db_url, caddie.home)
    code, checks = doctor(caddie, **healthy(caddie, data_root))
    assert code == 0, checks
    [head] = ScriptDirectory.from_config(alembic_config(caddie.db_url)).get_heads()
    assert checks["api"]["status"] == "pass" and f"sqlite database at {head} (head)" in checks["api"]["detail"]
    assert checks["token"]["detail"] == "signed in as ann"
    assert checks["database"]["status"] == "pass" and head in checks["database"]["detail"]
    assert checks["broker"]["status"] == "pass" and "runs: 0 waiting" in checks["broker"]["detail"]
    assert checks["workers"]["status"] == "skip" and "cannot broadcast" in checks["workers"]["detail"]  # caddie up's SQL broker
    assert checks["scheduler"]["status"] == "pass"
    assert checks["sandbox"]["status"] == "pass" and "uid 65534" in checks["sandbox"]["detail"]
    assert checks["job wrapper"]["status"] == "pass"
    assert checks["gpu"]["status"] == "pass"  # nothing declared: the CPU is what this machine provides
    assert checks["data sp1024"]["status"] == "pass" and "1 train and 1 validation shards" in checks["data sp1024"]["detail"]
    assert checks["data sp8192_caseops"]["status"] == "skip"
    assert checks["artifacts"]["status"] == "pass" and "writable" in checks["artifacts"]["detail"]
    text = caddie.runner.invoke(cli_app, ["doctor"], env=caddie.env(**healthy(caddie, data_root)))
    assert text.exit_code == 0 and text.stdout.splitlines()[-1].endswith("none failed")


def test_a_wrong_broker_url_fails_naming_it(caddie: Caddie, data_root: Path) -> None:
    beat_now(caddie.db_url, caddie.home)
    port = closed_port_url().rsplit(":", 1)[1]
    code, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    assert code == 1
    assert checks["broker"]["status"] == "fail" and f"redis://127.0.0.1:{port}/0 cannot be reached" in checks["broker"]["detail"]
    assert "CADDIE_BROKER_URL" in checks["broker"]["fix"] and checks["workers"]["status"] == "skip"
    assert [n for n, c in checks.items() if c["status"] == "fail"] == ["broker"]


@pytest.fixture(params=["sqlite", "postgresql"])
def own_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'own.db'}"
        return
    with empty_database() as url:
        yield url


def test_a_database_behind_head_fails_until_caddie_db_upgrade(caddie: Caddie, tmp_path: Path, own_database: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(caddie.db_url))
    [head] = script.get_heads()
    previous = script.get_revision(head).down_revision
    url = own_database
    upgrade(url, previous)
    with serve(Settings(home=tmp_path, database_url=url)) as api_url:  # an API on that database too
        code, checks = doctor(caddie, CADDIE_DATABASE_URL=url, CADDIE_URL=api_url, CADDIE_TOKEN=None)
    assert code == 1
    assert checks["database"]["status"] == "fail" and f"is at {previous}, behind head {head}" in checks["database"]["detail"]
    assert checks["database"]["fix"].startswith("`caddie db upgrade`")
    assert checks["api"]["status"] == "fail" and f"database at {previous}; this checkout's head is {head}" in checks["api"]["detail"]
    assert checks["scheduler"]["status"] == "skip"
    caddie.ok("db", "upgrade", CADDIE_DATABASE_URL=url)  # the fix it named
    _, checks = doctor(caddie, CADDIE_DATABASE_URL=url, CADDIE_TOKEN=None)
    assert checks["database"]["status"] == "pass"
    missing = tmp_path / "nowhere.db"
    _, checks = doctor(caddie, CADDIE_DATABASE_URL=f"sqlite:///{missing}")
    assert checks["database"]["status"] == "fail" and f"no database file at {missing}" in checks["database"]["detail"]
    assert not missing.exists()  # looking did not create it


def test_a_database_that_does_not_answer_fails(caddie: Caddie) -> None:
    port = closed_port_url().rsplit(":", 1)[1]
    code, checks = doctor(caddie, CADDIE_DATABASE_URL=f"postgresql+psycopg://caddie@127.0.0.1:{port}/caddie")
    assert code == 1 and checks["database"]["status"] == "fail" and "cannot be reached" in checks["database"]["detail"]


def test_a_missing_data_folder_fails_with_the_download_command(caddie: Caddie, tmp_path: Path) -> None:
    empty = tmp_path / "data"
    code, checks = doctor(caddie, CADDIE_DATA_ROOT=str(empty), CADDIE_DATA_VARIANTS="sp1024,sp8192")
    assert code == 1
    for variant in ("sp1024", "sp8192"):
        check = checks[f"data {variant}"]
        assert check["status"] == "fail" and "lacks train shards, validation shards, its tokenizer" in check["detail"]
        assert check["fix"].startswith(f"python -m trainer.data download --variant {variant} --out {empty}")
    assert subprocess.run([sys.executable, "-m", "trainer.data", "download", "--help"], cwd=REPO, capture_output=True, check=False).returncode == 0


def test_the_scheduler_check_reads_the_control_workers_heartbeat(caddie: Caddie, data_root: Path) -> None:
    beat_now(caddie.db_url, caddie.home)
    with get_sessionmaker(caddie.db_url)() as session:  # the last forecast, as if beat stopped 5 minutes ago
        session.execute(update(StoredQueueEstimate).values(made_at=utcnow() - timedelta(minutes=5)))
        session.commit()
    code, checks = doctor(caddie, **healthy(caddie, data_root))
    assert code == 1 and checks["scheduler"]["status"] == "fail" and "beat or the control worker is down" in checks["scheduler"]["detail"]
    assert "celery -A worker.celery_app beat" in checks["scheduler"]["fix"]
    beat_now(caddie.db_url, caddie.home)
    assert doctor(caddie, **healthy(caddie, data_root))[1]["scheduler"]["status"] == "pass"


def test_on_the_sql_broker_a_runs_worker_shows_by_the_leases_it_renews(caddie: Caddie, data_root: Path, spec_file: Path) -> None:
    [run_id] = ids_of(caddie.ok("submit", str(spec_file)).stdout)
    sessions = get_sessionmaker(caddie.db_url)
    try:
        with sessions() as session:  # as the scheduler's dispatch leaves it for the executor
            session.execute(update(Run).where(Run.id == run_id).values(status="RUNNING"))
            session.commit()
        assert Lease(sessions, run_id, heartbeat_s=5.0, stale_s=15.0).claim()  # the executor's lease: its heartbeat now
        _, checks = doctor(caddie, **healthy(caddie, data_root))
        assert checks["workers"]["status"] == "pass" and "a runs worker drives 1 active run(s)" in checks["workers"]["detail"]
        with sessions() as session:  # its worker died 10 minutes ago
            session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(minutes=10)))
            session.commit()
        code, checks = doctor(caddie, **healthy(caddie, data_root))
        assert code == 1 and checks["workers"]["status"] == "fail" and re.search(rf"#{run_id} \(6\d\d s ago\)", checks["workers"]["detail"])
    finally:
        with sessions() as session:
            session.execute(update(Run).where(Run.id == run_id).values(status="CANCELLED", worker_task_id=None, heartbeat_at=None))
            session.commit()


@pytest.fixture
def own_redis() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def test_workers_answer_the_ping_and_beat_the_heartbeat_on_redis(caddie: Caddie, data_root: Path, own_redis: PrivateRedis, tmp_path: Path) -> None:
    broker = f"{own_redis.url}/0"
    over = {**healthy(caddie, data_root), "CADDIE_BROKER_URL": broker, "CADDIE_QUEUE_FORECAST_INTERVAL_S": "1", "CADDIE_QUEUE_FORECAST_STALE_S": "4"}
    code, checks = doctor(caddie, **over)
    assert code == 1 and checks["workers"]["status"] == "fail" and "no worker consumes runs and control" in checks["workers"]["detail"]
    assert "celery -A worker.celery_app worker -Q runs" in checks["workers"]["fix"]
    env = {**os.environ, **{k: v for k, v in caddie.env(**over).items() if v is not None}, "PYTHONPATH": str(REPO)}
    celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app"]
    procs = [spawn([*celery, "worker", "-Q", "runs,control", "-P", "threads", "-c", "2", "-n", "doctor@%h", "--without-gossip",
                    "--without-mingle", "--without-heartbeat"], env, tmp_path / "worker.log"),
             spawn([*celery, "beat", "-s", str(tmp_path / "beat-schedule")], env, tmp_path / "beat.log")]  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            code, checks = doctor(caddie, **over)
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert code == 0, (checks, (tmp_path / "worker.log").read_text()[-2000:])
        assert checks["workers"]["status"] == "pass" and re.search(r"runs: doctor@\S+; control: doctor@", checks["workers"]["detail"])
        assert checks["scheduler"]["status"] == "pass"
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    time.sleep(5)  # past CADDIE_QUEUE_FORECAST_STALE_S (4 s), with a margin
    code, checks = doctor(caddie, **over)
    assert code == 1 and checks["workers"]["status"] == "fail" and checks["scheduler"]["status"] == "fail"


def test_a_worker_without_bubblewrap_fails_the_sandbox_check(caddie: Caddie, data_root: Path, tmp_path: Path) -> None:
    code, checks = doctor(caddie, **healthy(caddie, data_root), PATH=str(tmp_path))  # no bwrap on PATH
    assert code == 1 and checks["sandbox"]["status"] == "fail" and "bubblewrap (bwrap) is not on PATH" in checks["sandbox"]["detail"]
    assert "apt-get install bubblewrap" in checks["sandbox"]["fix"]
    _, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_SANDBOX="none")
    assert checks["sandbox"]["status"] == "warn"


def test_a_python_without_caddie_installed_fails_the_job_wrapper_check() -> None:
    # Found on a GPU machine: caddie's packages on the worker's PYTHONPATH only. The wrapper runs with the
    # job's env (PYTHONPATH: the audit hook), so every run failed before its job. The base interpreter of
    # this virtualenv has no caddie installed: the same situation.
    [check] = check_job_wrapper(sys._base_executable)
    assert check.status == "fail" and "No module named 'worker'" in check.detail and "every local run would fail" in check.detail
    assert "not only on PYTHONPATH" in check.fix


def test_environment_builds_need_uv_and_the_wheels_folder_named(caddie: Caddie, data_root: Path, tmp_path: Path) -> None:
    _, checks = doctor(caddie, **healthy(caddie, data_root))
    assert checks["environments"]["status"] == "pass" and checks["environments"]["detail"].startswith("uv ")
    code, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_ENV_WHEELS=str(tmp_path / "no-wheels"))
    assert code == 1 and checks["environments"]["status"] == "fail" and "is not a folder" in checks["environments"]["detail"]


def test_the_compile_cache_must_be_writable_and_says_what_it_holds(caddie: Caddie, data_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cc"
    (cache / "team-3" / "inductor").mkdir(parents=True)
    (cache / "team-3" / "inductor" / "graph").write_bytes(b"x" * 8192)
    _, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_COMPILE_CACHE_DIR=str(cache))
    assert checks["compile cache"]["status"] == "pass" and f"{cache}: 1 team(s), 0.00 GB in all" in checks["compile cache"]["detail"]
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    code, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_COMPILE_CACHE_DIR=str(blocked / "cc"))
    assert code == 1 and checks["compile cache"]["status"] == "fail" and "cannot be written" in checks["compile cache"]["detail"]
    _, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_COMPILE_CACHE_BYTES="0")
    assert checks["compile cache"]["status"] == "warn"


def test_gpus_the_deployment_declares_must_be_visible(caddie: Caddie, data_root: Path) -> None:
    code, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_PROVIDED_HARDWARE="H100:8")
    assert code == 1 and checks["gpu"]["status"] == "fail"
    assert "CADDIE_PROVIDED_HARDWARE says H100:8, but `nvidia-smi -L` lists 0 GPU(s)" in checks["gpu"]["detail"]


def test_an_artifact_store_that_cannot_be_written_or_is_full_fails(caddie: Caddie, data_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_ARTIFACT_DIR=str(blocker / "artifacts"))
    assert code == 1 and checks["artifacts"]["status"] == "fail" and "is not writable" in checks["artifacts"]["detail"]
    code, checks = doctor(caddie, "--min-free-gib", "1000000000", **healthy(caddie, data_root))
    assert code == 1 and checks["artifacts"]["status"] == "fail" and "under 1e+09 GiB" in checks["artifacts"]["detail"]


def test_an_s3_artifact_store_is_written_and_a_missing_bucket_fails(caddie: Caddie, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        code, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_S3_BUCKET="caddie-doctor")
        assert code == 1 and checks["artifacts"]["status"] == "fail" and "NoSuchBucket" in checks["artifacts"]["detail"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="caddie-doctor")
        _, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_S3_BUCKET="caddie-doctor")
        assert checks["artifacts"] == {"name": "artifacts", "status": "pass", "detail": "s3://caddie-doctor/caddie: an object written and deleted", "fix": ""}
        assert s3.list_objects_v2(Bucket="caddie-doctor").get("KeyCount") == 0  # the probe is gone


def test_skypilot_without_its_api_server_fails_saying_why(caddie: Caddie, data_root: Path) -> None:
    endpoint = closed_port_url()
    code, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_LAUNCHER="skypilot", SKYPILOT_API_SERVER_ENDPOINT=endpoint)
    assert code == 1
    assert checks["skypilot"]["status"] == "pass" and checks["skypilot"]["detail"].startswith("SkyPilot 0.")
    assert checks["skypilot task"]["status"] == "pass" and checks["skypilot task"]["detail"].endswith("a valid SkyPilot task for H100:8")
    server = checks["skypilot api server"]
    assert server["status"] == "fail" and f"no SkyPilot API server answers at {endpoint}/api/health" in server["detail"]
    assert "sky api start" in server["fix"]
    assert checks["gpu"]["status"] == "skip" and checks["data sp1024"]["status"] == "skip"  # the nodes download it
    assert "sandbox" not in checks
    _, checks = doctor(caddie, CADDIE_LAUNCHER="skypilot", SKYPILOT_API_SERVER_ENDPOINT=endpoint, CADDIE_SKY_INFRA="nocloud")
    assert checks["skypilot task"]["status"] == "fail" and "'nocloud' is not one of" in checks["skypilot task"]["detail"]
    _, checks = doctor(caddie, CADDIE_LAUNCHER="skypilot", SKYPILOT_API_SERVER_ENDPOINT=endpoint, CADDIE_SKY_TASK_TEMPLATE=str(caddie.home / "no-such-task.yaml"))
    assert checks["skypilot task"]["status"] == "fail" and "cannot read the SkyPilot task template" in checks["skypilot task"]["detail"]


def test_skypilots_local_endpoint_says_when_this_environment_cannot_run_the_server(caddie: Caddie, data_root: Path) -> None:
    """Issue 20: SkyPilot 0.9.2's API server dies at import with caddie's fastapi; the doctor names that line."""
    code, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_LAUNCHER="skypilot", SKYPILOT_API_SERVER_ENDPOINT="http://127.0.0.1:46580")
    server = checks["skypilot api server"]
    if server["status"] == "pass":
        pytest.skip("a SkyPilot API server answers on this machine's default endpoint")
    broken = server_cannot_start()
    assert code == 1 and server["status"] == "fail"
    if broken:
        assert f"this environment cannot run one: {broken}" in server["detail"] and "an environment of its own" in server["fix"]
    else:
        assert "sky api start" in server["fix"]


@pytest.fixture
def sky_server(tmp_path: Path) -> Iterator[str]:
    with running_sky_server(tmp_path) as endpoint:
        yield endpoint


def test_skypilots_real_api_server_answers_and_its_credential_check_enables_no_cloud(caddie: Caddie, data_root: Path, sky_server: str) -> None:
    over = {**healthy(caddie, data_root), "CADDIE_LAUNCHER": "skypilot", "SKYPILOT_API_SERVER_ENDPOINT": sky_server}
    code, checks = doctor(caddie, **over)
    server = checks["skypilot api server"]
    assert server["status"] == "pass" and server["detail"].startswith(f"{sky_server}: SkyPilot {version('skypilot')} (API ")
    clouds = checks["skypilot clouds"]  # SkyPilot's own check, run by that server with a HOME of no credentials
    assert code == 1 and clouds["status"] == "fail" and "SkyPilot's check enabled no cloud" in clouds["detail"]
    assert re.search(r"\(AWS: [^;]+;", clouds["detail"]) and clouds["fix"].endswith("then `sky check`")
    _, checks = doctor(caddie, **over, CADDIE_SKY_INFRA="kubernetes/my-context")
    clouds = checks["skypilot clouds"]
    assert clouds["status"] == "fail" and clouds["detail"].startswith("CADDIE_SKY_INFRA names kubernetes, but SkyPilot's check enabled no cloud (Kubernetes: ")
    assert clouds["fix"].endswith("then `sky check kubernetes`")


def test_bad_settings_fail_naming_the_variable(caddie: Caddie) -> None:
    code, checks = doctor(caddie, CADDIE_LAUNCHER="nope")
    assert code == 1 and list(checks) == ["settings"] and "CADDIE_LAUNCHER" in checks["settings"]["detail"]


def test_the_api_check_fails_where_nothing_answers(caddie: Caddie, data_root: Path) -> None:
    url = closed_port_url()
    code, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_URL=url)
    assert code == 1 and checks["api"]["status"] == "fail" and f"{url} cannot be reached" in checks["api"]["detail"]
    _, checks = doctor(caddie, **healthy(caddie, data_root), CADDIE_TOKEN="cad_not-a-token")
    assert checks["token"]["status"] == "fail" and "caddie login" in checks["token"]["fix"]


def test_every_caddie_command_named_in_a_hint_or_the_readme_exists(caddie: Caddie) -> None:
    """The doctor's fixes, `caddie up`'s hints, every message and the README name `caddie ...` commands that exist."""
    texts = [f"`{TOKEN_HINT}` `{DOCTOR_HINT}`", (REPO / "README.md").read_text()]
    texts += [f.read_text() for room in ("cli", "worker", "service", "trainer") for f in (REPO / room).rglob("*.py")]
    commands = {c for text in texts for c in re.findall(r"`caddie ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", text)}
    assert {"db upgrade", "login", "doctor", "up", "token create", "admin create-token"} <= commands, commands
    for command in sorted(commands):
        words = command.split()
        while words:  # `caddie up (it ...`, `caddie team` followed by prose: the longest prefix that is a command
            result = caddie.runner.invoke(cli_app, [*words, "--help"])
            if result.exit_code == 0 and "Usage" in result.output:
                break
            words = words[:-1]
        assert words, f"`caddie {command}` is named but is no command"
