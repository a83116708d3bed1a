"""API load benchmark (issue 2, item 11). Not a test.

What it does, in order:

1. Creates a fresh PostgreSQL database (``caddie_bench_<random>``), migrates it
   with Alembic, and bulk-loads (COPY) 4 teams, 12 users with one token each, a
   global admin, and --runs runs (default 100,000) with realistic spreads: most
   finished (SUCCEEDED 70 %, FAILED 12 %, CANCELLED 8 %), some QUEUED /
   PROVISIONING / RUNNING; one to three seeds per group; bigger teams submit more.
2. Starts the API (uvicorn, --workers processes, uvloop + httptools, no access
   log) on a free loopback port and waits for /healthz.
3. From a SECOND process (this file's ``drive`` command) runs each scenario
   with --concurrency clients in one asyncio loop, each client one keep-alive
   HTTP/1.1 connection sending its next request as soon as the previous answer
   is read (closed loop, no think time), for --duration seconds or
   --max-requests requests, whichever comes first (``*-paced`` scenarios: each
   client sends one request every --pace-ms instead, like a dashboard or
   `caddie ... --follow` polling):
     * list-member: ``GET /api/v1/runs?limit=50`` as team members (tokens
       spread over the 12 users): the hot path, filtered to the caller's team.
     * list-admin: the same as a global admin (no team filter).
     * submit: ``POST /api/v1/runs`` (one seed, a small config, a fresh
       Idempotency-Key each) as team members.
     * list-member-paced: list-member at a fixed rate per client.
     * queue-member, queue-admin (and their -paced forms): ``GET /api/v1/queue?limit=50``,
       the first page of the caller's queued runs (an admin's: every team's), soonest first.
   Latency is measured per request, from writing it to reading the last body
   byte; every non-2xx answer counts as an error.
4. Writes p50/p90/p99/max latency and requests/s per scenario to
   bench/results/api_load.md (with the command line and the machine), drops
   the database (unless --keep-db) and stops the server.

The load generator is a minimal HTTP/1.1 client on asyncio streams rather than
httpx: on a 2-core machine the generator shares the CPU with the API and
PostgreSQL, and a heavier client would mostly measure itself.

Issue 23 additions:
     * get-queued: ``GET /api/v1/runs/{id}`` of random QUEUED runs of the caller's
       team (a live run page polls it), the request that rebuilt the forecast.
     * ``--against REF``: a second API built from commit REF (``git archive`` into a
       temporary folder, same virtualenv) serves the same database (migrated by this
       checkout: a superset of REF's schema); the scenarios run on both sides in turn,
       ``--rounds`` times (ABBA order), and the report gives each side's figures and
       the ratios (this checkout / REF) with the machine's load at each turn.
     * while the load runs, a thread stands in for the control worker's beat: it
       stores the queue forecast every CADDIE_QUEUE_FORECAST_INTERVAL_S (10 s), as
       worker/control/forecast.py does (a REF without it ignores the table).
     * the API's worker processes' RSS at rest (after start, before any load).
     * bench/scale_out.py (item 8) runs these scenarios against the real stack instead: API replicas,
       several control workers and one beat on a shared Redis and PostgreSQL (no thread stands in).

Usage (from the repository root; PostgreSQL on 127.0.0.1:5432):
    python -m bench.api_load                       # full run, writes the results file
    python -m bench.api_load --runs 5000 --duration 3 --out /tmp/x.md   # quick check
    python -m bench.api_load --against e39c6bc --rounds 2 --scenarios list-member,get-queued,submit,list-member-paced
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):  # `python bench/api_load.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = os.environ.get("CADDIE_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

TEAMS = [("atlas", 0.40), ("birdie", 0.30), ("condor", 0.20), ("divot", 0.10)]  # name, share of runs


def team_spread(teams: int) -> list[tuple[str, float]]:
    """The 4 named teams, or ``teams`` teams whose shares fall off as 1/rank (a few big teams, many small)."""
    if teams == len(TEAMS):
        return TEAMS
    return [(f"team-{i:03d}", 1 / i) for i in range(1, teams + 1)]


USERS_PER_TEAM = 3
STATUS_SPREAD = [("SUCCEEDED", 0.70), ("FAILED", 0.12), ("CANCELLED", 0.08), ("QUEUED", 0.06), ("RUNNING", 0.02), ("PROVISIONING", 0.02)]
SEEDS = [1337, 42, 2025]
# Valid and under 16 MB under both default stacks (2026-03-23 before 565d2b0, 2026-04-27 since): the later one's
# XSA_LAST_N=11 refuses fewer layers and 12 are over the limit, so an --against of either side submits the same spec.
NUM_LAYERS = 11


# --- 1. database ----------------------------------------------------------------------------
def create_database(admin_url: str) -> str:
    from sqlalchemy import create_engine, text

    name = f"caddie_bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@dataclass
class Seeded:
    member_tokens: list[str]
    member_teams: list[int]  # the team id of each member token
    admin_token: str
    runs: int
    teams: int
    seconds: float
    team_weights: list[tuple[int, float]] = field(default_factory=list)  # (team id, share of runs): what add_queued draws from
    users_by_team: dict[int, list[int]] = field(default_factory=dict)


def _pick(rng: random.Random, spread: list[tuple[str, float]]) -> str:
    return rng.choices([k for k, _ in spread], weights=[w for _, w in spread])[0]


def _run_rows(n: int, teams: list[tuple[int, float]], users_by_team: dict[int, list[int]], rng: random.Random, queued: int | None = None, sizes: bool = False,
              hardware: str = "H100:8", active: bool = True):
    """Yield COPY rows for ``n`` runs in groups of 1-3 seeds, oldest first. ``queued``: exactly
    that many are QUEUED (the newest ones, as a real backlog), else 6 % of them spread over the history.
    ``active=False``: no RUNNING or PROVISIONING run (a real stack would look for their nodes)."""
    from service.runs.size_check import packed_bytes
    from service.runs.spec import NormalisedSpec
    from trainer.config import TrainerConfig

    team_ids, weights = [t for t, _ in teams], [w for _, w in teams]
    spread = [(k, w) for k, w in STATUS_SPREAD if not (queued is not None and k == "QUEUED") and (active or k not in ("RUNNING", "PROVISIONING"))]

    start = datetime.now(UTC) - timedelta(days=120)
    step = timedelta(days=120) / max(n, 1)
    made = 0
    group_no = 0
    while made < n:
        group_no += 1
        team = rng.choices(team_ids, weights=weights)[0]
        user = rng.choice(users_by_team[team])
        config = {"NUM_LAYERS": NUM_LAYERS, "MATRIX_LR": round(rng.uniform(0.01, 0.05), 3)}
        track = "10min_16mb" if rng.random() < 0.85 else "unlimited"
        group_key = NormalisedSpec(config=dict(sorted(config.items())), track=track, hardware=hardware).group_key(team)
        packed = packed_bytes(TrainerConfig.from_dict(dict(config))) if sizes else 0
        name = f"{rng.choice(['baseline', 'xsa', 'bigram', 'ttt', 'muon-lr', 'smear'])}-{group_no}"
        notes = rng.choice(["", "", "sweep of the learning rate", "seed stack with a wider MLP", "retry after preemption"])
        for seed in SEEDS[: rng.choice([1, 1, 3, 3, 3, 2])]:
            if made >= n:
                break
            made += 1
            submitted = start + step * made
            status = "QUEUED" if queued is not None and made > n - queued else _pick(rng, spread)
            finished = status in ("SUCCEEDED", "FAILED", "CANCELLED")
            started = submitted + timedelta(minutes=rng.uniform(0.1, 30)) if status != "QUEUED" and not (status == "CANCELLED" and rng.random() < 0.5) else None
            done_at = (started or submitted) + timedelta(minutes=rng.uniform(1, 22)) if finished else None
            ok = status == "SUCCEEDED"
            bpb = round(rng.gauss(1.16, 0.03), 5) if ok else None
            yield (
                team, user, name, notes, json.dumps(config), seed, group_key, track, hardware, rng.choice([0, 0, 0, 10]),
                status, "" if status != "FAILED" else rng.choice(["trainer exited with code 1", "heartbeat lost", "hard timeout"]),
                0 if rng.random() < 0.95 else 1, submitted, started, done_at,
                bpb, round(bpb * 1.69, 5) if ok else None, round(bpb + 0.02, 5) if ok else None,
                rng.randint(15_500_000, 15_999_000) if ok else None, 0 if not ok else rng.randint(20_000, 90_000) * 10,
                # --sizes: what a finished run records of its artifact (compressed 0.54-0.57 of its packed weights; the 2026-04-27 record: 0.570 for int6, as the
                # records' codecs do), the size check's figures (ratios and code sizes)
                round(packed * rng.uniform(0.54, 0.57)) if ok and sizes else None, rng.randint(50_000, 120_000) if ok and sizes else None,
            )


RUN_COLUMNS = (
    "team_id, user_id, name, notes, spec, seed, group_key, track, hardware, priority, status, status_reason, attempts,"
    " submitted_at, started_at, finished_at, val_bpb, val_loss, pre_ttt_bpb, artifact_bytes, log_bytes, model_bytes, code_bytes"
)


def seed_database(
    url: str, runs: int, teams: int = len(TEAMS), queued: int | None = None, sizes: bool = False, hardware: str = "H100:8", active: bool = True
) -> Seeded:
    """Teams, users, tokens through the service's own functions; runs by COPY (fast)."""
    from service.core.db import get_sessionmaker
    from service.teams import accounts

    t0 = time.perf_counter()
    rng = random.Random(1234)
    member_tokens: list[str] = []
    member_teams: list[int] = []
    users_by_team: dict[int, list[int]] = {}
    with get_sessionmaker(url)() as s:
        team_weights: list[tuple[int, float]] = []
        for team_name, weight in team_spread(teams):
            team = accounts.create_team(s, team_name)
            team_weights.append((team.id, weight))
            users_by_team[team.id] = []
            for i in range(USERS_PER_TEAM):
                user = accounts.create_user(s, f"{team_name}-{i}")
                accounts.add_member(s, team, user, "admin" if i == 0 else "member")
                users_by_team[team.id].append(user.id)
                member_tokens.append(accounts.create_token(s, user, "bench")[1])
                member_teams.append(team.id)
        root = accounts.create_user(s, "root", is_admin=True)
        admin_token = accounts.create_token(s, root, "bench")[1]
        s.commit()
    team_ids = list(users_by_team)
    _copy_runs(url, _run_rows(runs, team_weights, users_by_team, rng, queued, sizes, hardware, active))
    # Runs came by COPY, past the writers that keep the storage quota's running totals: recount them
    # as the janitor would, so the submit scenario reads real figures (an older API ignores the table).
    from service.billing.storage import recount_team

    with get_sessionmaker(url)() as s:
        for team_id in team_ids:
            recount_team(s, team_id)
    return Seeded(member_tokens=member_tokens, member_teams=member_teams, admin_token=admin_token, runs=runs, teams=teams, seconds=time.perf_counter() - t0,
                  team_weights=team_weights, users_by_team=users_by_team)


def add_queued(url: str, seeded: Seeded, n: int, hardware: str = "H100:8") -> float:
    """``n`` more QUEUED runs over ``seeded``'s teams and users (a bigger backlog on the same database); seconds taken."""
    t0 = time.perf_counter()
    _copy_runs(url, _run_rows(n, seeded.team_weights, seeded.users_by_team, random.Random(n), queued=n, hardware=hardware))
    seeded.runs += n
    return time.perf_counter() - t0


def _copy_runs(url: str, rows) -> None:  # noqa: ANN001 (an iterable of COPY rows)
    from sqlalchemy import text

    from service.core.db import get_engine

    raw = get_engine(url).raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f"COPY runs ({RUN_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()
    # VACUUM as well: a table just filled by COPY has no hint bits or visibility map yet, and the
    # first turn's reads would set them (writes) while the later turns' do not.
    with get_engine(url).execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text("VACUUM (ANALYZE)"))


def queued_ids_by_team(url: str) -> dict[int, list[int]]:
    from sqlalchemy import text

    from service.core.db import get_engine

    out: dict[int, list[int]] = {}
    with get_engine(url).connect() as conn:
        for run_id, team_id in conn.execute(text("SELECT id, team_id FROM runs WHERE status = 'QUEUED'")):
            out.setdefault(team_id, []).append(run_id)
    return out


# --- 2. the API --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_argv(port: int, workers: int) -> list[str]:
    """One API replica: uvicorn with ``workers`` processes on ``port``, uvloop + httptools, no access log."""
    return [
        sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def start_api(url: str, port: int, workers: int, source: Path = REPO) -> subprocess.Popen:
    cmd = api_argv(port, workers)
    # The seeded runs and the submit scenario ask for H100:8: the API stands for a deployment that provides it
    # (since issue 19 a local launcher on a machine without GPUs refuses it; older commits ignore the variable).
    env = {"CADDIE_PROVIDED_HARDWARE": "H100:8", **os.environ, "CADDIE_DATABASE_URL": url, "PYTHONPATH": str(source)}
    return wait_until_healthy(subprocess.Popen(cmd, cwd=source, env=env), port)


def wait_until_healthy(proc: subprocess.Popen, port: int, limit_s: float = 60) -> subprocess.Popen:
    """``proc`` once the API it started answers /healthz on ``port``; it is stopped if it never does."""
    import httpx

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"the API did not answer /healthz within {limit_s:.0f} s")


def export_commit(ref: str, into: Path) -> str:
    """The tree of commit ``ref`` in ``into`` (git archive: the repository itself is not touched); its short hash."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "archive", commit], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {ref} failed")
    return commit


def api_rss_mib(proc: subprocess.Popen) -> list[float]:
    """Resident memory of the API's worker processes (the children of uvicorn's supervisor), MiB."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    out = []
    for pid in children or [str(proc.pid)]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(round(int(line.split()[1]) / 1024, 1))
        except OSError:
            pass
    return out


class ForecastBeat:
    """Stands in for the control worker's beat: stores the queue forecast every interval (worker/control/forecast.py)."""

    def __init__(self, url: str) -> None:
        import threading

        from service.core.settings import Settings

        self.url, self.settings = url, Settings(database_url=url)
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="forecast-beat", daemon=True)

    def _loop(self) -> None:
        from service.core.db import get_sessionmaker
        from worker.control.forecast import refresh_forecast_niced

        while not self._stop.is_set():
            t0 = time.perf_counter()
            refresh_forecast_niced(get_sessionmaker(self.url), self.settings)
            self.seconds.append(time.perf_counter() - t0)
            self._stop.wait(self.settings.queue_forecast_interval_s)

    def __enter__(self) -> "ForecastBeat":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)


def cpu_seconds(apis: list[subprocess.Popen], url: str) -> tuple[float, float, float]:
    """CPU time (user + system, s) so far of the API's processes and of the PostgreSQL backends serving their
    connections: a turn's difference over its requests is what a request cost, the database's share included
    (one client in one process shows only the API's). Only the API's own backends count (matched by the client
    port of each connection), not the forecast thread's, autovacuum's or the WAL writer's, which swing with the
    turn's length and load; but a backend whose connection the pool closed mid-turn (overflow) is missed. So the
    third figure is every PostgreSQL process's, ended backends included (the postmaster's children times)."""
    import psutil

    def used(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            return 0.0

    api_s, ports = 0.0, set()
    for api in apis:
        root = psutil.Process(api.pid)
        for proc in [root, *root.children(recursive=True)]:
            api_s += used(proc)
            try:
                ports |= {c.laddr.port for c in proc.net_connections(kind="tcp") if c.laddr}
            except psutil.Error:
                pass
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        rows = conn.execute("SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
    pg_s = 0.0
    for pid, port in rows:
        if port in ports:
            try:
                pg_s += used(psutil.Process(pid))
            except psutil.Error:
                pass
    pg_all_s = sum(used(p) for p in psutil.process_iter(["name"]) if p.info.get("name") == "postgres")
    return api_s, pg_s, pg_all_s


def stop_api(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- 3. the load (runs in the second process) --------------------------------------------------
@dataclass
class ScenarioResult:
    scenario: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    first_error: str
    warmup_requests: int = 0  # sent before the measured window (counted in the turn's CPU per request)


def _request_bytes(method: str, host: str, path: str, token: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n{extra}"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise RuntimeError("response without Content-Length")
    body = await reader.readexactly(length)
    return status, body


def _submit_body(i: int, rng: random.Random, hardware: str = "H100:8") -> bytes:
    spec = {
        "name": f"load-{i}",
        "notes": "api_load benchmark",
        "track": "10min_16mb",
        "hardware": hardware,
        "config": {"NUM_LAYERS": NUM_LAYERS, "MATRIX_LR": round(rng.uniform(0.01, 0.05), 3)},
        "seeds": [rng.randint(0, 10_000)],
    }
    return json.dumps(spec).encode()


async def _client(
    host: str, port: int, make_request, stop_at: float, budget: list[int], latencies: list[float], errors: list[str], interval_s: float = 0.0
) -> None:
    """One client on one keep-alive connection. With ``interval_s`` it sends a
    request every interval_s (from a random phase) and latency counts from the
    planned send time, so a slow server cannot hide queueing (no coordinated
    omission); without it, the next request goes out as soon as the answer is in."""
    reader, writer = await asyncio.open_connection(host, port)
    planned = time.perf_counter() + random.uniform(0, interval_s)
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            if interval_s:
                await asyncio.sleep(max(0.0, planned - time.perf_counter()))
                if time.perf_counter() >= stop_at:
                    break
            budget[0] -= 1
            request = make_request()
            t0 = planned if interval_s else time.perf_counter()
            planned += interval_s
            writer.write(request)
            status, body = await _read_response(reader)
            latencies.append(time.perf_counter() - t0)
            if not 200 <= status < 300:
                errors.append(f"HTTP {status}: {body[:200]!r}")
    finally:
        writer.close()


async def _scenario(
    name: str, base_urls: list[str], tokens: list[str], concurrency: int, duration: float, max_requests: int, interval_s: float = 0.0,
    queued: list[list[int]] | None = None, hardware: str = "H100:8",
) -> ScenarioResult:
    # Client i talks to replica i mod n, as a load balancer spreading connections would.
    targets = [(parts.hostname or "127.0.0.1", parts.port or 80) for parts in map(urlsplit, base_urls)]
    rng = random.Random(7)
    counter = iter(range(10**9))

    def factory(i: int, token: str, queued: list[int] | None = None):
        host, port = targets[i % len(targets)]
        hostport = f"{host}:{port}"
        base = name.removesuffix("-paced")
        if base == "get-queued":
            ids = queued or [1]
            return lambda: _request_bytes("GET", hostport, f"/api/v1/runs/{rng.choice(ids)}", token)
        if base.startswith("list"):
            fixed = _request_bytes("GET", hostport, "/api/v1/runs?limit=50", token)
            return lambda: fixed
        if base.startswith("queue"):
            fixed = _request_bytes("GET", hostport, "/api/v1/queue?limit=50", token)
            return lambda: fixed
        return lambda: _request_bytes(
            "POST", hostport, "/api/v1/runs", token, _submit_body(next(counter), rng, hardware), extra=f"Idempotency-Key: {uuid.uuid4().hex}\r\n"
        )

    # Warm-up: a few requests per connection slot, not counted.
    warm: list[float] = []
    werr: list[str] = []
    queued = queued or [[] for _ in tokens]
    await asyncio.gather(*[_client(*targets[i % len(targets)], factory(i, tokens[i % len(tokens)], queued[i % len(tokens)]), time.perf_counter() + 2,
                                   [5], warm, werr) for i in range(concurrency)])  # fmt: skip
    latencies: list[float] = []
    errors: list[str] = []
    budget = [max_requests]
    t0 = time.perf_counter()
    stop_at = t0 + duration
    await asyncio.gather(
        *[_client(*targets[i % len(targets)], factory(i, tokens[i % len(tokens)], queued[i % len(tokens)]), stop_at, budget, latencies, errors, interval_s)
          for i in range(concurrency)]
    )
    seconds = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))] if ms else float("nan")

    return ScenarioResult(
        scenario=name,
        concurrency=concurrency,
        requests=len(ms),
        errors=len(errors),
        seconds=round(seconds, 2),
        rps=round(len(ms) / seconds, 1),
        p50_ms=round(pct(50), 2),
        p90_ms=round(pct(90), 2),
        p99_ms=round(pct(99), 2),
        max_ms=round(ms[-1], 2) if ms else float("nan"),
        mean_ms=round(statistics.fmean(ms), 2) if ms else float("nan"),
        first_error=errors[0] if errors else "",
        warmup_requests=len(warm),
    )


def drive(args: argparse.Namespace) -> None:
    """The load generator (second process): reads the plan as JSON on stdin, prints results as JSON."""
    try:
        asyncio.set_event_loop_policy(__import__("uvloop").EventLoopPolicy())
    except ImportError:
        pass
    plan = json.load(sys.stdin)
    results = []
    for scenario in plan["scenarios"]:
        admin = scenario.removesuffix("-paced").endswith("-admin")
        tokens = plan["admin_tokens"] if admin else plan["member_tokens"]
        interval_s = plan["pace_ms"] / 1000 if scenario.endswith("-paced") else 0.0
        queued = None if admin else plan.get("member_queued")
        result = asyncio.run(_scenario(scenario, plan.get("urls") or [plan["url"]], tokens, plan["concurrency"], plan["duration"], plan["max_requests"], interval_s, queued,
                                         plan.get("hardware", "H100:8")))
        print(f"  {scenario}: {result.requests} requests, p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, {result.rps} req/s", file=sys.stderr)
        results.append(asdict(result))
    json.dump(results, sys.stdout)


# --- 4. the report -------------------------------------------------------------------------------
def machine(load_at_start: str = "") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    start = f"{load_at_start} at the start, " if load_at_start else ""
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}; load average (1, 5, 15 min) {start}{load} at the end"


def pg_version(url: str) -> str:
    from sqlalchemy import text

    from service.core.db import get_engine

    with get_engine(url).connect() as conn:
        return str(conn.execute(text("SHOW server_version")).scalar())


def write_report(path: Path, args: argparse.Namespace, seeded: Seeded, results: list[dict], pg: str, command: str, extra: dict) -> None:
    sides = extra["sides"]
    lines = [
        "# API load benchmark",
        "",
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by `bench/api_load.py` (issue 2, item 11; issue 23).",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine(args.load_at_start)}; PostgreSQL {pg} on the same machine (127.0.0.1).",
        f"- Database: {seeded.runs:,} runs ({extra['queued']:,} QUEUED) over {seeded.teams} teams / {seeded.teams * USERS_PER_TEAM} users, loaded in {seeded.seconds:.1f} s (COPY)"
        + ("; SUCCEEDED runs record model and code bytes (the size check's ratios)." if args.sizes else "."),
        f"- API: {args.replicas} replica(s), each uvicorn with {args.workers} worker process(es), uvloop + httptools, no access log; client i talks to"
        " replica i mod n; the load from a second process on loopback; one stored forecast (the thread below) read by all.",
        f"- Load: {args.concurrency} concurrent clients, each a keep-alive connection sending its next request as soon as the last "
        f"answer arrived (closed loop, no think time), {args.duration:g} s per scenario (at most {args.max_requests:,} requests), after a short warm-up"
        + (f"; before the rounds, a warm-up round of {args.warmup:g} s a scenario per side, not reported." if args.warmup else "."),
        "- list-member: `GET /api/v1/runs?limit=50` as team members; list-admin: the same as a global admin (all teams);"
        " get-queued: `GET /api/v1/runs/{id}` of random QUEUED runs of the caller's team;"
        " submit: `POST /api/v1/runs` with one seed and a fresh Idempotency-Key;"
        " queue-member / queue-admin: `GET /api/v1/queue?limit=50` (the first page of the caller's queued runs);"
        f" *-paced: the same, but each client sends one request every {args.pace_ms:g} ms"
        f" ({args.concurrency * 1000 / args.pace_ms:g} req/s offered in all; latency counted from the planned send time).",
        "- Queue forecast: a thread of the benchmark stored it every 10 s as the control worker's beat does "
        f"({len(extra['forecast_s'])} times, {statistics.median(extra['forecast_s']):.3f} s each (median), computed and stored).",
        "- API worker processes' RSS at rest (MiB): " + "; ".join(f"{label}: {', '.join(f'{x:.0f}' for x in mib)}" for label, mib in extra["rss"].items()) + ".",
        "",
        "- CPU ms/req: over the turn, per request served in it (warm-up included), user + system: the API's processes; PG: the"
        " PostgreSQL backends of the API's open connections (one the pool closed mid-turn is missed); PG all: every PostgreSQL"
        " process (autovacuum, WAL, the forecast thread's backend and ended backends included). A turn of several scenarios gives"
        " each the turn's figure. CPU is less swayed than req/s by the machine's other load: read both.",
        "",
        "| side | round | load (1, 5, 15 min) | scenario | clients | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms | API CPU ms/req | PG CPU ms/req | PG all CPU ms/req |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['side']} | {r['round']} | {r['load']} | {r['scenario']} | {r['concurrency']} | {r['requests']:,} | {r['errors']} | {r['rps']:,.0f} "
            f"| {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['api_cpu_ms']:.2f} | {r['pg_cpu_ms']:.2f} | {r['pg_all_cpu_ms']:.2f} |"
        )
    if len(sides) == 2:
        lines += ["", f"Ratios, {sides[0]} / {sides[1]} (medians over the rounds; req/s above 1 and p99 below 1 favour {sides[0]}):", "",
                  "| scenario | req/s | ratio | p99 ms | ratio | API CPU ms/req | PG CPU ms/req | PG all CPU ms/req |", "|---|---|---:|---|---:|---|---|---|"]  # fmt: skip
        for scenario in dict.fromkeys(r["scenario"] for r in results):
            med = {side: {k: statistics.median(r[k] for r in results if r["side"] == side and r["scenario"] == scenario)
                          for k in ("rps", "p99_ms", "api_cpu_ms", "pg_cpu_ms", "pg_all_cpu_ms")} for side in sides}  # fmt: skip
            a, b = med[sides[0]], med[sides[1]]
            lines.append(f"| {scenario} | {a['rps']:,.0f} vs {b['rps']:,.0f} | {a['rps'] / max(b['rps'], 1e-9):.2f}x "
                         f"| {a['p99_ms']:.1f} vs {b['p99_ms']:.1f} | {a['p99_ms'] / max(b['p99_ms'], 1e-9):.2f}x "
                         f"| {a['api_cpu_ms']:.2f} vs {b['api_cpu_ms']:.2f} | {a['pg_cpu_ms']:.2f} vs {b['pg_cpu_ms']:.2f} | {a['pg_all_cpu_ms']:.2f} vs {b['pg_all_cpu_ms']:.2f} |")  # fmt: skip
    errors = [f"- {r['side']}, round {r['round']}, {r['scenario']}: {r['first_error']}" for r in results if r["first_error"]]
    if errors:
        lines += ["", "First error per scenario:", *errors]
    if args.notes:
        lines += ["", Path(args.notes).read_text().rstrip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _drive_once(plan: dict) -> list[dict]:
    driver = subprocess.run(
        [sys.executable, "-m", "bench.api_load", "--drive"], input=json.dumps(plan), capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )  # fmt: skip
    sys.stderr.write(driver.stderr)
    if driver.returncode != 0:
        raise RuntimeError(f"the load generator failed with code {driver.returncode}")
    return json.loads(driver.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help="PostgreSQL URL allowed to CREATE DATABASE")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--teams", type=int, default=len(TEAMS), help="teams (4: the named ones; more: shares falling off as 1/rank)")
    parser.add_argument("--sizes", action="store_true", help="SUCCEEDED runs record model and code bytes (the size check measures the team's ratios from them)")
    parser.add_argument("--queued", type=int, help="exactly this many QUEUED runs, the newest (default: 6 %% of --runs, spread)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes per API replica")
    parser.add_argument("--replicas", type=int, default=1, help="API replicas (each its own uvicorn with --workers processes) the clients are spread over")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per scenario")
    parser.add_argument("--max-requests", type=int, default=50_000, help="request cap per scenario")
    parser.add_argument("--scenarios", default="list-member,list-admin,submit,list-member-paced")
    parser.add_argument("--pace-ms", type=float, default=200.0, help="in *-paced scenarios each client sends one request per this many ms")
    parser.add_argument("--against", help="a commit whose API runs the same scenarios in turn on the same database (ratios in the report)")
    parser.add_argument("--rounds", type=int, default=0, help="turns per side (default: 2 with --against, else 1)")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds a scenario each side runs first, not reported (0: none)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_load.md")
    parser.add_argument("--notes", help="a markdown file appended to the report (analysis)")
    parser.add_argument("--keep-db", action="store_true", help="leave the database behind (its URL is printed)")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)  # the load-generator process
    args = parser.parse_args(argv)
    if args.drive:
        drive(args)
        return

    import shutil
    import tempfile

    args.rounds = args.rounds or (2 if args.against else 1)
    args.load_at_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    command = " ".join(["python -m bench.api_load", shlex.join(argv if argv is not None else sys.argv[1:])]).strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip() or "HEAD"
    url = create_database(args.admin_url)
    print(f"database {url}", file=sys.stderr)
    apis: dict[str, list[subprocess.Popen]] = {}
    exported = None
    try:
        from service.core.migrate import upgrade

        upgrade(url)
        seeded = seed_database(url, args.runs, args.teams, args.queued, args.sizes)
        queued = queued_ids_by_team(url)
        print(f"loaded {seeded.runs:,} runs ({sum(map(len, queued.values())):,} queued) in {seeded.seconds:.1f} s", file=sys.stderr)
        sides = [(f"{head} (this checkout)", REPO)]
        if args.against:
            exported = Path(tempfile.mkdtemp(prefix="caddie_against_"))
            sides.append((export_commit(args.against, exported), exported))
        results: list[dict] = []
        rss: dict[str, list[float]] = {}
        with ForecastBeat(url) as beat:
            while not beat.seconds:
                time.sleep(0.2)
            labels = [label for label, _ in sides]
            # Round 0 (--warmup seconds a scenario, not reported): the first turn on a fresh database also
            # creates the submitted runs' first groups and fills PostgreSQL's caches, which later turns do not.
            for round_no in range(0 if args.warmup else 1, args.rounds + 1):
                for label in labels if round_no % 2 == 1 else labels[::-1]:  # ABBA: drift in the machine's load falls on both sides
                    # One side at a time (each holds its own database connections), started for its turn:
                    # --replicas API processes of --workers each, as replicas behind a load balancer.
                    ports = [free_port() for _ in range(args.replicas)]
                    apis[label] = [start_api(url, port, args.workers, dict(sides)[label]) for port in ports]
                    time.sleep(3)  # at rest: imports done, no request served yet
                    rss.setdefault(label, [mib for api in apis[label] for mib in api_rss_mib(api)])
                    plan = {
                        "urls": [f"http://127.0.0.1:{port}" for port in ports],
                        "member_tokens": seeded.member_tokens,
                        "member_queued": [queued.get(team, []) for team in seeded.member_teams],
                        "admin_tokens": [seeded.admin_token],
                        "scenarios": [s.strip() for s in args.scenarios.split(",") if s.strip()],
                        "concurrency": args.concurrency,
                        "duration": args.duration if round_no else args.warmup,
                        "max_requests": args.max_requests,
                        "pace_ms": args.pace_ms,
                    }
                    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
                    print(f"round {round_no}{' (warm-up)' if not round_no else ''}, {label} (load {load})", file=sys.stderr)
                    try:
                        cpu_before = cpu_seconds(apis[label], url)
                        turn = _drive_once(plan)
                        cpu_after = cpu_seconds(apis[label], url)
                        served = max(1, sum(r["requests"] + r.get("warmup_requests", 0) for r in turn))  # the turn's CPU per request of all its scenarios
                        api_ms, pg_ms, pg_all_ms = (1000 * (b - a) / served for a, b in zip(cpu_before, cpu_after, strict=True))
                        for r in turn:
                            if round_no:
                                results.append({**r, "side": label, "round": round_no, "load": load, "api_cpu_ms": api_ms, "pg_cpu_ms": pg_ms, "pg_all_cpu_ms": pg_all_ms})
                    finally:
                        for api in apis.pop(label):
                            stop_api(api)
            forecast_s = list(beat.seconds)
        extra = {"rss": rss, "forecast_s": forecast_s, "queued": sum(map(len, queued.values())), "sides": labels}
        write_report(args.out, args, seeded, results, pg_version(url), command, extra)
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        for replicas in apis.values():
            for proc in replicas:
                stop_api(proc)
        from service.core.db import dispose_engines

        dispose_engines()
        if not args.keep_db:
            drop_database(args.admin_url, url)
        if exported is not None:
            shutil.rmtree(exported, ignore_errors=True)


if __name__ == "__main__":
    main()
