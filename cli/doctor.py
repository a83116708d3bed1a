"""``caddie doctor``: what a deployment needs, checked one piece at a time, each with its fix.

Every check reads the real thing (the API over HTTP, the database and its migrations, the
broker, the workers through Celery's broadcast ping and the control worker's own heartbeat,
the launcher: a sandboxed smoke job, or SkyPilot's API server and its credential check; the
data of each variant, the artifact store, the GPUs) and answers pass, warn, fail or skip
(not applicable here, saying why). Any fail makes the command exit 1. A check never raises:
its error is its detail.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import httpx

from cli.client import API_PREFIX, ClientConfig

Status = Literal["pass", "warn", "fail", "skip"]
MARKS: dict[str, str] = {"pass": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}
HTTP_TIMEOUT_S = 5.0
BROKER_TIMEOUT_S = 3.0
PING_TIMEOUT_S = 2.0
SANDBOX_TIMEOUT_S = 30.0
SKY_CHECK_TIMEOUT_S = 120.0  # SkyPilot's own credential check asks every cloud it knows
SANDBOX_UID = 65534
REASONS_CHARS = 600  # of the clouds' reasons quoted in a failed check
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DISABLED_LINE = re.compile(r"^\s+([A-Za-z][\w .-]*): disabled\s*$")
REASON_LINE = re.compile(r"^\s+Reason(?: \[[^]]*\])?: (.+)$")
# The worker commands of the README's production setup (a fix names them).
WORKER_COMMANDS = ("celery -A worker.celery_app worker -Q runs -P threads -c $CADDIE_MAX_CONCURRENT_RUNS; "
                   "celery -A worker.celery_app worker -Q control -P solo; celery -A worker.celery_app beat")  # fmt: skip


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def missing_sqlite_file(url: str) -> Path | None:
    """The absolute path of a SQLite database file that ``url`` names and that does not exist, else None."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    path = Path(database).absolute()
    return None if path.exists() else path


def shown_url(url: str) -> str:
    """A database or broker URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses (a broker's): drop what follows the user
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def guarded(name: str, fn: Callable[[], list[Check]]) -> list[Check]:
    """fn's checks; an error it did not expect is a fail of `name` saying what it was."""
    try:
        return fn()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the doctor reports, it never stops half-way (SkyPilot exits on errors)
        return [Check(name, "fail", f"the check itself failed: {type(exc).__name__}: {first_line(exc)}")]


def migration_heads(url: str) -> tuple[str, ...]:
    """The head revision(s) of this checkout's migrations."""
    from alembic.script import ScriptDirectory

    from service.core.migrate import alembic_config

    return tuple(sorted(ScriptDirectory.from_config(alembic_config(url)).get_heads()))


# --- the API ------------------------------------------------------------------------------
def check_api(config: ClientConfig, heads: tuple[str, ...]) -> list[Check]:
    url = config.url
    try:
        r = httpx.get(f"{url}/healthz", timeout=HTTP_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return [Check("api", "fail", f"{url} cannot be reached: {first_line(exc)}",
                      "start the API (`caddie up`, or uvicorn --factory service.api.app:create_app), or point CADDIE_URL / "
                      "`caddie login --url URL` at it")]  # fmt: skip
    if r.status_code != 200:
        return [Check("api", "fail", f"{url}/healthz answered {r.status_code}: {r.text[:200]}",
                      "read the API's log: its database is likely down or unreachable from it")]
    try:
        health = r.json()
    except ValueError:
        health = None
    if not isinstance(health, dict) or health.get("status") != "ok":
        return [Check("api", "fail", f"{url} answered /healthz, but not as caddie does", "CADDIE_URL names another service")]
    version = health.get("version") or "unknown (an API older than its version field)"
    revision = health.get("database_revision")
    detail = f"{url}: caddie {version}, {health.get('database')} database at {revision or 'no migration'}"
    found: list[Check] = []
    if "database_revision" not in health:
        found.append(Check("api", "warn", f"{url}: an older caddie, whose /healthz does not say its version and migration",
                           "update the API to this checkout's caddie"))
    elif not revision:
        found.append(Check("api", "fail", detail, "migrate the API's database: `caddie db upgrade` with its CADDIE_DATABASE_URL"))
    elif tuple(sorted(revision.split(","))) != heads:
        found.append(Check("api", "fail", f"{detail}; this checkout's head is {','.join(heads)}",
                           "the API's database or its code is not this checkout's: `caddie db upgrade` with the API's "
                           "CADDIE_DATABASE_URL, then restart the API; or update this checkout"))  # fmt: skip
    else:
        found.append(Check("api", "pass", f"{detail} (head)"))
    found.append(check_token(config))
    return found


def check_token(config: ClientConfig) -> Check:
    if not config.token:
        return Check("token", "skip", "no token (CADDIE_TOKEN, or `caddie login`): not checked")
    r = httpx.get(f"{config.url}{API_PREFIX}/users/me", headers={"Authorization": f"Bearer {config.token}"}, timeout=HTTP_TIMEOUT_S)
    if r.status_code == 200:
        return Check("token", "pass", f"signed in as {r.json().get('name')}")
    return Check("token", "fail", f"the token is refused ({r.status_code})", "`caddie login --url URL` with a valid token")


# --- database, broker, workers ------------------------------------------------------------
def check_database(settings: Any, heads: tuple[str, ...]) -> list[Check]:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    url = settings.database_url
    shown = shown_url(url)
    missing = missing_sqlite_file(url)
    if missing is not None:
        return [Check("database", "fail", f"no database file at {missing}", "`caddie up` (it creates one), or `caddie db upgrade`, "
                      "or set CADDIE_DATABASE_URL to the deployment's database")]  # fmt: skip
    connect_args = {"connect_timeout": int(HTTP_TIMEOUT_S)} if url.startswith("postgresql") else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            current = tuple(sorted(MigrationContext.configure(conn).get_current_heads()))
    except SQLAlchemyError as exc:
        return [Check("database", "fail", f"{shown} cannot be reached: {first_line(exc)}",
                      "start the database, or set CADDIE_DATABASE_URL to one that answers")]
    finally:
        engine.dispose()
    if current == heads:
        return [Check("database", "pass", f"{shown} at {','.join(current)} (head)")]
    if not current:
        return [Check("database", "fail", f"{shown} has no caddie tables (never migrated)", "`caddie db upgrade`")]
    from alembic.script import ScriptDirectory

    from service.core.migrate import alembic_config

    if not _revisions_known(ScriptDirectory.from_config(alembic_config(url)), current):
        return [Check("database", "fail", f"{shown} is at {','.join(current)}, a migration this checkout does not have (head {','.join(heads)})",
                      "this caddie is older than its database: update it (git pull; pip install -e .)")]  # fmt: skip
    return [Check("database", "fail", f"{shown} is at {','.join(current)}, behind head {','.join(heads)}",
                  "`caddie db upgrade` (then restart the API and the workers)")]


def _revisions_known(script: Any, revisions: tuple[str, ...]) -> bool:
    from alembic.util import CommandError

    try:
        return all(script.get_revision(rev) is not None for rev in revisions)
    except CommandError:
        return False


def check_broker(settings: Any) -> list[Check]:
    from kombu import Connection
    from kombu.exceptions import ChannelError

    url = settings.broker_url
    shown = shown_url(url)
    waiting: list[str] = []
    try:
        with Connection(url, connect_timeout=BROKER_TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
            for queue in ("runs", "control"):
                with conn.channel() as channel:  # a refused passive declare closes its channel
                    try:
                        declared = channel.queue_declare(queue=queue, passive=True)
                        waiting.append(f"{queue}: {declared.message_count} waiting")
                    except ChannelError:
                        waiting.append(f"{queue}: not declared yet (no worker has started on this broker)")
    except Exception as exc:  # noqa: BLE001 - kombu raises the transport's own errors (redis, sqlalchemy, socket)
        return [Check("broker", "fail", f"{shown} cannot be reached: {first_line(exc)}",
                      "start the broker, or set CADDIE_BROKER_URL to one that answers (redis://HOST:6379/0; "
                      "unset: a SQLite file under CADDIE_HOME)")]  # fmt: skip
    return [Check("broker", "pass", f"{shown} ({'; '.join(waiting)})")]


def check_workers(settings: Any, database_ok: bool) -> list[Check]:
    from kombu import Connection

    with Connection(settings.broker_url) as conn:  # no connection made: the transport class says whether it can fan out
        broadcasts = bool(getattr(conn.transport.Channel, "supports_fanout", False))
    if not broadcasts:
        cannot = f"the broker {shown_url(settings.broker_url).split('://')[0]}:// cannot broadcast, so workers cannot be pinged"
        if not database_ok:
            return [Check("workers", "skip", f"{cannot}, and the database cannot show their runs' heartbeats")]
        return [check_run_heartbeats(settings, cannot)]
    from worker.celery_app import make_celery

    app = make_celery(settings)
    try:
        replies = app.control.inspect(timeout=PING_TIMEOUT_S).active_queues() or {}
    finally:
        app.close()
    by_queue: dict[str, list[str]] = {"runs": [], "control": []}
    for worker, queues in replies.items():
        for q in queues or []:
            by_queue.setdefault(q.get("name", ""), []).append(worker)
    missing = [q for q in ("runs", "control") if not by_queue.get(q)]
    seen = "; ".join(f"{q}: {', '.join(sorted(w))}" for q, w in by_queue.items() if w) or "no worker answered"
    if missing:
        return [Check("workers", "fail", f"no worker consumes {' and '.join(missing)} ({seen}; pinged for {PING_TIMEOUT_S:g} s)",
                      f"start them (`caddie up` does), as in the README: {WORKER_COMMANDS}")]
    return [Check("workers", "pass", seen)]


def check_run_heartbeats(settings: Any, cannot: str) -> Check:
    """The runs worker's own heartbeat: each active run's lease, renewed every CADDIE_HEARTBEAT_S by the worker driving it."""
    from sqlalchemy import select

    from service.core.db import get_sessionmaker
    from service.core.models import Run
    from service.core.status import ACTIVE_VALUES

    with get_sessionmaker(settings.database_url, settings)() as session:
        rows = session.execute(select(Run.id, Run.heartbeat_at).where(Run.status.in_(ACTIVE_VALUES)).order_by(Run.id)).all()
    if not rows:
        return Check("workers", "skip", f"{cannot}; no run is active, so none shows a runs worker's heartbeat (the scheduler check "
                     "shows the control worker)")  # fmt: skip
    now = datetime.now(timezone.utc)
    limit = settings.heartbeat_s * settings.stale_heartbeats
    ages = {r.id: (now - (r.heartbeat_at if r.heartbeat_at.tzinfo else r.heartbeat_at.replace(tzinfo=timezone.utc))).total_seconds()
            if r.heartbeat_at else None for r in rows}  # fmt: skip
    stale = {i: a for i, a in ages.items() if a is None or a > limit}
    if stale:
        shown = ", ".join(f"#{i} ({'never' if a is None else f'{a:,.0f} s ago'})" for i, a in list(stale.items())[:10])
        return Check("workers", "fail", f"active runs whose heartbeat stopped (older than {limit:g} s): {shown}: no runs worker drives "
                     "them", f"start a runs worker (`caddie up` does): {WORKER_COMMANDS}")  # fmt: skip
    return Check("workers", "pass", f"a runs worker drives {len(rows)} active run(s), latest heartbeat {min(a for a in ages.values() if a is not None):.0f} s ago "
                 "(the broker cannot broadcast: read from the runs' leases)")  # fmt: skip


def check_scheduler(settings: Any) -> list[Check]:
    """The control worker's heartbeat: the queue forecast it stores at every beat tick, queue empty or not."""
    from service.core.db import get_sessionmaker
    from service.queue.stored import read_forecast

    with get_sessionmaker(settings.database_url, settings)() as session:
        forecast = read_forecast(session)
    limit = settings.queue_forecast_stale_s
    if forecast is None:
        return [Check("scheduler", "fail", "no queue forecast was ever stored: beat and the control worker have not run on this database",
                      f"start beat and a control worker (`caddie up` does): {WORKER_COMMANDS}")]
    made = forecast.made_at if forecast.made_at.tzinfo else forecast.made_at.replace(tzinfo=timezone.utc)
    age = (datetime.now(timezone.utc) - made).total_seconds()
    if age > limit:
        return [Check("scheduler", "fail", f"the last queue forecast is {age:,.0f} s old (CADDIE_QUEUE_FORECAST_STALE_S {limit:g}): "
                      "beat or the control worker is down", f"start them (`caddie up` does): {WORKER_COMMANDS}")]  # fmt: skip
    return [Check("scheduler", "pass", f"beat and the control worker are alive: queue forecast {age:.0f} s old, {forecast.size} queued")]


# --- launcher -----------------------------------------------------------------------------
SANDBOX_PROBE = "import json, os; print(json.dumps({'uid': os.getuid(), 'dev': sorted(os.listdir('/dev')), 'home': os.path.exists(%r)}))"


def check_local_launcher(settings: Any) -> list[Check]:
    from worker.launchers.sandbox import bwrap_path, gpu_devices, sealed_argv

    if settings.sandbox == "none":
        return [Check("sandbox", "warn", "CADDIE_SANDBOX=none: jobs run unsealed, as the worker's own user (one trusted team only)")]
    bwrap = bwrap_path()
    if bwrap is None:
        return [Check("sandbox", "fail", "bubblewrap (bwrap) is not on PATH: every local job would be refused",
                      "apt-get install bubblewrap (or, unsafely, CADDIE_SANDBOX=none)")]
    host_gpus = [d.name for d in gpu_devices()]
    home = str(Path(settings.home).resolve())
    with tempfile.TemporaryDirectory(prefix="caddie-doctor-") as tmp:
        argv = sealed_argv([sys.executable, "-c", SANDBOX_PROBE % home], workdir=Path(tmp), ro_paths=[], bwrap=bwrap)
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=SANDBOX_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return [Check("sandbox", "fail", f"a sandboxed python did not finish in {SANDBOX_TIMEOUT_S:g} s", "run bwrap by hand to see why")]
        took = time.monotonic() - started
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return [Check("sandbox", "fail", f"{bwrap} could not run a sealed python: {why}",
                      "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 "
                      "bwrap's AppArmor profile), or run the worker where they work")]  # fmt: skip
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    problems = []
    if seen["uid"] != SANDBOX_UID:
        problems.append(f"the job ran as uid {seen['uid']}, not {SANDBOX_UID}")
    if seen["home"]:
        problems.append(f"CADDIE_HOME ({home}) is visible inside")
    missing_gpus = sorted(set(host_gpus) - set(seen["dev"]))
    if missing_gpus:
        problems.append(f"host GPU devices missing inside: {', '.join(missing_gpus)}")
    if problems:
        return [Check("sandbox", "fail", "; ".join(problems), "this worker's bwrap does not seal as caddie expects: see README 'Sealed jobs'")]
    gpus = f", {len(host_gpus)} GPU device(s) inside" if host_gpus else ""
    return [Check("sandbox", "pass", f"{bwrap}: a sealed python ran as uid {SANDBOX_UID} in {took:.2f} s{gpus}")]


def check_job_wrapper(python: str = sys.executable) -> list[Check]:
    """The local launcher starts each job under ``python -m worker.launchers.local_wrapper`` with the job's
    own environment, whose PYTHONPATH is the audit hook's folder alone: caddie must be installed into the
    worker's Python, not only on the worker's PYTHONPATH, or every run fails before its job starts."""
    from worker.launchers.trainer_env import AUDIT_ENV, inherited_env

    env = {**inherited_env(os.environ), **AUDIT_ENV}
    with tempfile.TemporaryDirectory(prefix="caddie-doctor-") as tmp:
        done = subprocess.run([python, "-m", "worker.launchers.local_wrapper", "--help"], cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return [Check("job wrapper", "fail", f"{python} cannot start caddie's job wrapper in a job's environment: {why}: every local run would fail",
                      "install caddie into the worker's Python (`make install`, or pip install -e '.[worker]'), not only on PYTHONPATH")]
    return [Check("job wrapper", "pass", f"{python} starts caddie's job wrapper in a job's environment")]


def check_environments(settings: Any) -> list[Check]:
    """What a script run's declared environment is built with on this machine (worker.launchers.envs): uv, the envs folder, CADDIE_ENV_WHEELS."""
    from worker.launchers.envs import uv_bin

    try:
        uv = uv_bin()
        done = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (ImportError, FileNotFoundError, OSError, subprocess.TimeoutExpired) as exc:
        return [Check("environments", "fail", f"uv cannot run: {first_line(exc)}: a run that declares an environment would fail",
                      "pip install uv (part of caddie[worker])")]
    if done.returncode != 0:
        return [Check("environments", "fail", f"{uv} --version exited {done.returncode}", "pip install --force-reinstall uv")]
    wheels = settings.env_wheels
    if wheels is not None and not Path(wheels).is_dir():
        return [Check("environments", "fail", f"CADDIE_ENV_WHEELS {wheels} is not a folder: every environment build would fail",
                      "point CADDIE_ENV_WHEELS at the folder of wheels, or unset it")]
    where = Path(settings.envs_dir).resolve()
    offline = ", offline" if settings.env_offline else ""
    return [Check("environments", "pass", f"{done.stdout.strip()} builds declared environments into {where}{offline}"
                  f"{f', with the wheels of {wheels}' if wheels else ''}")]


def check_compile_cache(settings: Any) -> list[Check]:
    """The teams' compile caches (worker.launchers.compile_cache): where, how much each holds, and that the worker can write there."""
    from worker.launchers.limits import folder_bytes

    limit = int(settings.compile_cache_bytes)
    if limit <= 0:
        return [Check("compile cache", "warn", "off (CADDIE_COMPILE_CACHE_BYTES=0): every job compiles from scratch, minutes of each GPU run",
                      "set CADDIE_COMPILE_CACHE_BYTES (default 20 GiB per team)")]
    root = Path(settings.compile_cache_dir).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as exc:
        return [Check("compile cache", "fail", f"{root} cannot be written: {first_line(exc)}: every local job would fail to start",
                      "make CADDIE_COMPILE_CACHE_DIR a folder the worker's user can write, or set CADDIE_COMPILE_CACHE_BYTES=0")]
    teams = sorted(root.glob("team-*"))
    held = sum(folder_bytes(t) for t in teams)
    return [Check("compile cache", "pass", f"{root}: {len(teams)} team(s), {held / 1e9:.2f} GB in all; each trimmed to "
                  f"{limit / 2**30:.1f} GiB before its team's jobs")]


def check_gpus(settings: Any) -> list[Check]:
    from service.core.hardware import CPU, probe_local_node, split_list

    node = probe_local_node(None)  # what the driver lists, before CADDIE_GPU_COUNT
    declared = [h for h in split_list(settings.provided_hardware) if h != CPU]
    needed = max([gpu_count_of(h) for h in declared] + [settings.gpu_count or 0])
    said = f"CADDIE_PROVIDED_HARDWARE says {', '.join(declared)}" if declared else f"CADDIE_GPU_COUNT={settings.gpu_count}"
    if needed > node.gpus:
        return [Check("gpu", "fail", f"{said}, but `nvidia-smi -L` lists {node.gpus} GPU(s)",
                      "install the NVIDIA driver so that `nvidia-smi -L` lists the GPUs, or set CADDIE_PROVIDED_HARDWARE / "
                      "CADDIE_GPU_COUNT to what this machine has")]  # fmt: skip
    if needed == 0:
        return [Check("gpu", "pass", f"no GPU needed: local jobs run on {node.describe()} (runs asking for GPUs are refused or, with "
                      "CADDIE_UNAVAILABLE_HARDWARE=accept, run here)")]  # fmt: skip
    return [Check("gpu", "pass", f"{node.describe()} ({node.source})")]


def gpu_count_of(hardware: str) -> int:
    """``H100:8`` -> 8, ``H100`` -> 1 (a count that is not a number counts as 1)."""
    count = hardware.partition(":")[2]
    return int(count) if count.isdigit() else 1


def check_skypilot(settings: Any) -> list[Check]:
    try:
        import sky
        from sky.client import sdk
        from sky.server import common as server_common
    except Exception as exc:  # noqa: BLE001 - an import that breaks on a dependency raises anything
        return [Check("skypilot", "fail", f"SkyPilot cannot be imported: {first_line(exc)}", "pip install -e '.[skypilot]' on the worker host")]
    found = [Check("skypilot", "pass", f"SkyPilot {sky.__version__} imported"), *guarded("skypilot task", lambda: check_sky_task(settings))]
    # Read the endpoint now: SkyPilot caches it per process, and SKYPILOT_API_SERVER_ENDPOINT may have changed.
    getattr(server_common.get_server_url, "cache_clear", lambda: None)()
    endpoint = server_common.get_server_url()
    # get_api_server_status only asks; sdk.api_info() would start a local server when none answers.
    info = server_common.get_api_server_status(endpoint)
    status = server_common.ApiServerStatus
    if info.status == status.VERSION_MISMATCH:
        found.append(Check("skypilot api server", "fail", f"{endpoint}: SkyPilot {info.version} speaks API {info.api_version}, this client "
                           f"{sky.__version__} another", "install the same SkyPilot release on the worker host and the API server"))  # fmt: skip
        return found
    if info.status != status.HEALTHY:
        local = endpoint in server_common.AVAILABLE_LOCAL_API_SERVER_URLS
        detail = f"no SkyPilot API server answers at {endpoint}/api/health"
        fix = "start it: `sky api start` (or set SKYPILOT_API_SERVER_ENDPOINT to your team's server)"
        if local:
            broken = server_cannot_start()
            if broken:
                detail += f", and this environment cannot run one: {broken}"
                fix = ("run SkyPilot's API server in an environment of its own (python -m venv sky-env; sky-env/bin/pip install "
                       "skypilot; sky-env/bin/sky api start) and keep this one as its client")  # fmt: skip
        found.append(Check("skypilot api server", "fail", detail, fix))
        return found
    found.append(Check("skypilot api server", "pass", f"{endpoint}: SkyPilot {info.version} (API {info.api_version}, commit {str(info.commit)[:12]})"))
    found.append(check_sky_clouds(sdk, settings.sky_infra))
    return found


def check_sky_task(settings: Any) -> list[Check]:
    """The task a run would launch (the template, CADDIE_SKY_HARDWARE, CADDIE_SKY_INFRA), checked by SkyPilot's own Task."""
    from worker.launchers.base import JobSpec, LauncherError
    from worker.launchers.skypilot import SkyPilotLauncher

    launcher = SkyPilotLauncher(settings)
    job = JobSpec(run_id=0, env={}, hardware=settings.sky_hardware, timeout_s=600.0)
    where = f" on {settings.sky_infra}" if settings.sky_infra else ""
    try:
        launcher.build_task(job, "doctor")
    except LauncherError as exc:
        return [Check("skypilot task", "fail", f"{launcher.template_path} with {settings.sky_hardware}{where}: {exc}",
                      "fix CADDIE_SKY_TASK_TEMPLATE, CADDIE_SKY_HARDWARE or CADDIE_SKY_INFRA")]
    return [Check("skypilot task", "pass", f"{launcher.template_path}: a valid SkyPilot task for {settings.sky_hardware}{where}")]


def server_cannot_start() -> str:
    """Why SkyPilot's API server cannot be imported in this Python ('' when it can): its process would die at start."""
    done = subprocess.run([sys.executable, "-c", "import sky.server.server"], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 0:
        return ""
    return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]


def check_sky_clouds(sdk: Any, infra: str) -> Check:
    """SkyPilot's own credential check (`sky check`), run by its API server: which clouds are enabled, and why not."""
    said = io.StringIO()  # what `sky check` prints: a line per disabled cloud and its reason
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(lambda: sdk.stream_and_get(sdk.check(None, False), output_stream=said))
        try:
            enabled = future.result(timeout=SKY_CHECK_TIMEOUT_S)
        except FutureTimeout:
            return Check("skypilot clouds", "fail", f"SkyPilot's credential check took over {SKY_CHECK_TIMEOUT_S:g} s", "run `sky check` by hand")
        except SystemExit:  # SkyPilot's check exits when it enables no cloud; the SDK raises that here
            enabled = []
    if isinstance(enabled, dict):  # newer releases answer per workspace
        enabled = sorted({c for clouds in enabled.values() for c in clouds})
    names = sorted(str(c) for c in enabled or [])
    wanted = infra.strip().split("/")[0] if infra.strip() else ""
    reasons = disabled_reasons(said.getvalue())
    if not names or (wanted and wanted.lower() not in {n.lower() for n in names}):
        why = {k: v for k, v in reasons.items() if k.lower() == wanted.lower()} if wanted else reasons
        shown = "; ".join(f"{cloud}: {reason}" for cloud, reason in why.items())[:REASONS_CHARS]
        head = f"CADDIE_SKY_INFRA names {wanted}, but SkyPilot's check enabled {', '.join(names) or 'no cloud'}" if wanted else \
            "SkyPilot's check enabled no cloud: its API server has no credentials it can use"
        return Check("skypilot clouds", "fail", f"{head}{' (' + shown + ')' if shown else ''}",
                     f"give the API server's user credentials (README 'Running on a real cloud'), then `{('sky check ' + wanted).strip()}`")
    return Check("skypilot clouds", "pass", f"enabled: {', '.join(names)}")


def disabled_reasons(text: str) -> dict[str, str]:
    """{cloud: the first sentence of its reason} from what `sky check` prints ('  AWS: disabled' then 'Reason [...]: ...')."""
    reasons: dict[str, str] = {}
    cloud = None
    for line in ANSI.sub("", text).splitlines():
        if m := DISABLED_LINE.match(line):
            cloud = m[1]
        elif cloud and (m := REASON_LINE.match(line)):
            reasons[cloud] = m[1].split(". ")[0].rstrip(".")
            cloud = None
    return reasons


# --- data, artifacts ----------------------------------------------------------------------
def check_data(settings: Any) -> list[Check]:
    from trainer.recipes import RecipeError, parse_sources, resolve

    root = Path(settings.data_root).resolve()
    found = []
    for variant in settings.data_variant_choices:
        name = f"data {variant}"
        try:
            recipe = resolve(variant, parse_sources(settings.data_sources))
        except RecipeError as exc:
            found.append(Check(name, "fail", str(exc), "fix CADDIE_DATA_VARIANTS / CADDIE_DATA_SOURCES"))
            continue
        if settings.launcher != "local":
            found.append(Check(name, "skip", f"SkyPilot nodes download it from {recipe.source.describe()} themselves"))
            continue
        if recipe.built:
            own = resolve(variant, parse_sources(settings.data_sources), trainer=True)
            by_trainer = f"; the shared trainer's by {own.build.describe()}" if own.build and own.build.module else ""
            found.append(Check(name, "skip", f"built per run from the run's own files ({recipe.build.script if recipe.build else ''}){by_trainer}, "
                                             "once per content hash"))
            continue
        folder, tokenizer = root / recipe.data_path, root / recipe.tokenizer_path
        train, val = sorted(folder.glob("fineweb_train_*.bin")), sorted(folder.glob("fineweb_val_*.bin"))
        lacking = [what for what, ok in (("train shards", train), ("validation shards", val), ("its tokenizer", tokenizer.is_file())) if not ok]
        if lacking:
            found.append(Check(name, "fail", f"{folder} lacks {', '.join(lacking)}: runs on {variant} would be refused",
                               f"python -m trainer.data download --variant {variant} --out {root} (or drop it from CADDIE_DATA_VARIANTS)"))
            continue
        found.append(Check(name, "pass", f"{len(train)} train and {len(val)} validation shards, tokenizer {tokenizer.name} ({folder})"))
    return found


def check_artifacts(settings: Any, min_free_gib: float) -> list[Check]:
    if settings.s3_bucket:
        from service.core.storage import S3ArtifactStore

        store = S3ArtifactStore(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url)
        key = f"{store.prefix}/.doctor/{uuid.uuid4().hex}" if store.prefix else f".doctor/{uuid.uuid4().hex}"
        try:
            store.client.put_object(Bucket=store.bucket, Key=key, Body=b"caddie doctor\n")
            store.client.delete_object(Bucket=store.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - botocore's errors (credentials, endpoint, permissions)
            return [Check("artifacts", "fail", f"s3://{store.bucket}/{key}: {first_line(exc)}",
                          "give the worker and the API credentials that may write the bucket (CADDIE_S3_*, AWS_*)")]
        return [Check("artifacts", "pass", f"s3://{store.bucket}/{store.prefix}: an object written and deleted")]
    root = Path(settings.artifact_dir).resolve()
    probe = root / f".doctor-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"caddie doctor\n")
        probe.unlink()
    except OSError as exc:
        return [Check("artifacts", "fail", f"{root} is not writable: {exc.strerror or exc}",
                      "give the worker's user write access to CADDIE_ARTIFACT_DIR, or set it elsewhere")]
    free = shutil.disk_usage(root).free / 2**30
    if free < min_free_gib:
        return [Check("artifacts", "fail", f"{root}: {free:,.1f} GiB free, under {min_free_gib:g} GiB",
                      "free space there, or set CADDIE_ARTIFACT_DIR / CADDIE_S3_BUCKET elsewhere")]
    return [Check("artifacts", "pass", f"{root}: writable, {free:,.1f} GiB free")]


# --- all of it ----------------------------------------------------------------------------
def run_checks(config: ClientConfig, *, min_free_gib: float = 1.0) -> list[Check]:
    """Every check, in the order a deployment is brought up."""
    from pydantic import ValidationError

    from service.core.settings import Settings

    try:
        settings = Settings()
    except (ValidationError, ValueError) as exc:
        problems = exc.errors() if isinstance(exc, ValidationError) else [{"loc": (), "msg": str(exc)}]
        text = "; ".join(f"CADDIE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" if e["loc"] else str(e["msg"]) for e in problems)
        return [Check("settings", "fail", text, "fix those environment variables (README 'Production setup' lists them)")]
    checks = [Check("settings", "pass", f"launcher {settings.launcher}, home {Path(settings.home).resolve()}")]
    heads = migration_heads(settings.database_url)
    checks += guarded("api", lambda: check_api(config, heads))
    database = guarded("database", lambda: check_database(settings, heads))
    checks += database
    broker = guarded("broker", lambda: check_broker(settings))
    checks += broker
    if broker[0].status == "pass":
        checks += guarded("workers", lambda: check_workers(settings, database[0].status == "pass"))
    else:
        checks.append(Check("workers", "skip", "the broker cannot be reached"))
    if database[0].status == "pass":
        checks += guarded("scheduler", lambda: check_scheduler(settings))
    else:
        checks.append(Check("scheduler", "skip", "the database is not at head"))
    if settings.launcher == "local":
        checks += guarded("sandbox", lambda: check_local_launcher(settings))
        checks += guarded("job wrapper", check_job_wrapper)
        checks += guarded("gpu", lambda: check_gpus(settings))
        checks += guarded("environments", lambda: check_environments(settings))
        checks += guarded("compile cache", lambda: check_compile_cache(settings))
    else:
        checks += guarded("skypilot", lambda: check_skypilot(settings))
        checks.append(Check("gpu", "skip", "GPUs are on SkyPilot's nodes"))
    checks += guarded("data", lambda: check_data(settings))
    checks += guarded("artifacts", lambda: check_artifacts(settings, min_free_gib))
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def as_json(checks: list[Check]) -> str:
    return json.dumps({"ok": not failed(checks), "checks": [asdict(c) for c in checks]}, indent=2)


def as_lines(checks: list[Check]) -> list[str]:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{MARKS[c.status]}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("fail", "warn"):
            lines.append(f"      {'':<{width}}  fix: {c.fix}")
    bad = sum(c.status == "fail" for c in checks)
    lines.append(f"{len(checks)} checks: {bad} failed" if bad else f"{len(checks)} checks: none failed")
    return lines

