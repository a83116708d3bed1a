"""APIs and workers replicated, at 10,000 / 50,000 / 100,000 queued runs (issue 23, item 8). Not a test.

    python -m bench.scale_out [--scales 10000,50000,100000] [--teams 50] [--replicas 2] [--workers 1]
                              [--control-workers 2] [--runs-workers 1] [--duration 8] [--warmup 3]

What bench/api_load.py measures, against the stack a deployment that outgrows one machine runs:
PostgreSQL and Redis shared, the API and the workers replicated. All of them real processes, on
this one machine:

* PostgreSQL: a fresh database on --admin-url's server (as api_load), migrated; Redis: one of its
  own (bench/faults.py), the broker of every worker and API;
* --replicas API replicas (uvicorn, --workers processes each, api_load's flags), --runs-workers
  `-Q runs` workers, --control-workers `-Q control -P solo` workers (named control<i>@%h, logging
  each task they run at INFO), ONE beat; bench/faults.py's environment (CADDIE_ON_SUBMIT_HOOK as the
  README says, the local launcher with 2 slots on this machine's `cpu`, a stand-in trainer), each
  process restarted if it dies (faults.Stack);
* two long stand-in runs take both slots first; then the database gets --history finished runs and the
  first scale's backlog over --teams teams (api_load's seeding, by COPY), all on `cpu`, none
  RUNNING or PROVISIONING (such a run would have no node behind it): every scheduler tick reads the
  whole backlog and starts nothing, as bench/tick_burst.py's backlog; the submit scenario submits on
  `cpu` too, into the same queue;
* per scale, once a forecast of the whole backlog is stored (by the real beat's forecast tick on one of
  the control workers; no thread of this benchmark stands in for it): a warm-up turn (--warmup s a
  scenario, not reported), then --rounds turns of api_load's scenarios from a second process
  (api_load's load generator; client i talks to replica i mod --replicas); then the next scale's extra
  queued runs are added to the same database.

The report (a section added under bench/results/api_load.md's title, newest first as its sections are):
per scale and scenario req/s, p50/p90/p99, errors, the API's and its PostgreSQL backends' CPU per
request; per turn, from the control workers' logs (Celery's "Task caddie.X[...] succeeded in Ys"), the
forecast, scheduler and janitor ticks run across all control workers, by worker, their durations, and the
gaps between consecutive forecast and janitor ticks (one forecast per interval across the workers, not
one per worker); the machine's load at each turn, the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # `python bench/scale_out.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import create_engine, text

from bench.api_load import (
    DEFAULT_ADMIN_URL,
    REPO,
    _drive_once,
    add_queued,
    api_argv,
    cpu_seconds,
    create_database,
    drop_database,
    free_port,
    machine,
    pg_version,
    queued_ids_by_team,
    seed_database,
    wait_until_healthy,
)
from bench.faults import CAPACITY, MARKS, STAND_IN, Redis, Stack, bootstrap, hold_slots, stack_env, task_runs
from service.core.settings import Settings

HARDWARE = "cpu"  # the local launcher's slots on this machine: the backlog, the holders and the submits wait for them
TICKS = {"caddie.forecast_tick": "forecast", "caddie.schedule_tick": "schedule", "caddie.janitor_tick": "janitor"}
DEFAULTS = Settings(_env_file=None)  # the intervals beat runs under (stack_env sets none of them)


# --- the control workers' ticks (pure) -----------------------------------------------------------
@dataclass
class TickStats:
    count: int = 0
    by_worker: dict[str, int] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)  # each tick's duration
    gaps: list[float] = field(default_factory=list)  # between the starts of consecutive ticks, whichever worker ran them


def tick_stats(runs_by_worker: dict[str, list[tuple[float, str, float]]], start: float, end: float) -> dict[str, TickStats]:
    """The forecast, schedule and janitor ticks that ended in [start, end] across all workers, by kind
    (``runs_by_worker``: each worker's (when it ended, task, seconds), as faults.task_runs reads them)."""
    out = {kind: TickStats() for kind in TICKS.values()}
    started: dict[str, list[float]] = {kind: [] for kind in out}
    for worker, runs in runs_by_worker.items():
        for when, task, seconds in runs:
            kind = TICKS.get(task)
            if kind is None or not start <= when <= end:
                continue
            stats = out[kind]
            stats.count += 1
            stats.by_worker[worker] = stats.by_worker.get(worker, 0) + 1
            stats.seconds.append(seconds)
            started[kind].append(when - seconds)  # beat's cadence: a long tick ends late but started on time
    for kind, times in started.items():
        times.sort()
        out[kind].gaps = [round(b - a, 1) for a, b in zip(times, times[1:])]
    return out


# --- the stack -------------------------------------------------------------------------------------
def make_stack(home: Path, db_url: str, broker_url: str, args: argparse.Namespace) -> tuple[Stack, list[tuple[str, int]]]:
    """faults.Stack with --replicas APIs, --runs-workers and --control-workers workers and one beat; the APIs' (name, port)."""
    stack = Stack(home, stack_env(home, db_url, broker_url))
    runs_argv, control_argv = stack.argv.pop("runs worker"), stack.argv.pop("control worker")
    beat = stack.argv.pop("beat")
    apis = [("api", stack.port)] + [(f"api {i}", free_port()) for i in range(2, args.replicas + 1)]
    stack.argv = {name: api_argv(port, args.workers) for name, port in apis}  # "api" first: Stack.start waits for it
    for i in range(1, args.runs_workers + 1):  # faults' runs worker, less its fault hook (bench/_fault_hooks.py): plain celery
        argv = [f"runs{i}@%h" if a == "runs@%h" else a for a in runs_argv]
        stack.argv[f"runs worker {i}"] = [sys.executable, "-m", "celery", *argv[2:]]
    for i in range(1, args.control_workers + 1):  # INFO: Celery logs each task it ran and how long it took
        stack.argv[f"control worker {i}"] = [f"control{i}@%h" if a == "control@%h" else "INFO" if a == "WARNING" else a for a in control_argv]
    stack.argv["beat"] = beat
    stack.restarts = dict.fromkeys(stack.argv, 0)
    return stack, apis


def release_slots(api_url: str, token: str, held: list[int], home: Path) -> None:
    """Cancel the holding runs; then end any stand-in still alive (its start marked, its end not), by its pid."""
    try:
        with httpx.Client(base_url=f"{api_url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            for run in held:
                c.post(f"/runs/{run}/cancel", params={"wait_s": 10})
    except httpx.HTTPError:
        pass
    marks = [json.loads(line) for path in home.rglob(MARKS) for line in path.read_text().splitlines() if line.strip()]
    ended = {m["pid"] for m in marks if m["kind"] == "end"}
    for pid in {m["pid"] for m in marks if m["kind"] == "start"} - ended:
        try:
            if "stand_in.py" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def wait_for_forecast(db_url: str, since: datetime, covering: int, limit_s: float = 120) -> tuple[int, float]:
    """Wait until a forecast made after ``since`` covering at least ``covering`` queued runs is stored; (runs it covers, wait s)."""
    engine = create_engine(db_url)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < limit_s:
            with engine.connect() as conn:
                row = conn.execute(text("SELECT position, made_at FROM queue_estimates WHERE run_id = 0")).first()
            if row is not None and row.made_at > since and row.position >= covering:
                return int(row.position), time.monotonic() - t0
            time.sleep(0.5)
        raise RuntimeError(f"no forecast of {covering:,} queued runs stored within {limit_s:.0f} s")
    finally:
        engine.dispose()


def status_counts(db_url: str) -> dict[str, int]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {str(k): int(v) for k, v in conn.execute(text("SELECT status, count(*) FROM runs GROUP BY status"))}
    finally:
        engine.dispose()


# --- the report ---------------------------------------------------------------------------------------
def _ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:,.0f} / {max(seconds) * 1000:,.0f}" if seconds else "-"


def _gaps(gaps: list[float]) -> str:
    return f"{min(gaps):.1f} / {statistics.median(gaps):.1f} / {max(gaps):.1f}" if gaps else "-"


def section(args: argparse.Namespace, command: str, turns: list[dict], pg: str, restarts: dict[str, int], seeding: list[str]) -> str:
    forecast_s, janitor_s, tick_s = DEFAULTS.queue_forecast_interval_s, DEFAULTS.janitor_tick_s, DEFAULTS.scheduler_tick_s
    lines = [
        f"## APIs and workers replicated (issue 23 item 8): {', '.join(f'{q:,}' for q in args.scales)} queued over {args.teams} teams "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `bench/scale_out.py`)",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine(args.load_at_start)}; PostgreSQL {pg} (this machine's server, a fresh database) shared by every process.",
        f"- Stack, real processes: Redis of the benchmark's own (the broker of all); {args.replicas} API replica(s), uvicorn with {args.workers}"
        f" worker process(es) each (uvloop + httptools, no access log; client i talks to replica i mod {args.replicas});"
        f" {args.control_workers} control worker(s) (`celery -A worker.celery_app worker -Q control -P solo -n control<i>@%h`, INFO);"
        f" {args.runs_workers} runs worker(s) (`-Q runs`); one beat (forecast every {forecast_s:g} s, scheduler tick every {tick_s:g} s,"
        f" janitor every {janitor_s:g} s); `CADDIE_ON_SUBMIT_HOOK=worker.notify:runs_submitted`; the local launcher with {CAPACITY} slots"
        " (`cpu`), both held by stand-in runs for the whole benchmark. Processes restarted: "
        + (", ".join(f"{k} {v}" for k, v in restarts.items() if v) or "none") + ".",
        f"- Runs: {args.history:,} finished (SUCCEEDED, FAILED, CANCELLED; none RUNNING or PROVISIONING: no node would stand behind one),"
        " then each scale's backlog, all on `cpu` behind the two held slots (as bench/tick_burst.py's backlog), so every tick reads the"
        " whole backlog and starts nothing; each scale adds queued runs to the same database up to its figure (the runs the"
        " submit scenario queued count towards it). "
        + "; ".join(seeding) + ".",
        f"- Load: {args.concurrency} clients from a second process (bench/api_load.py's load generator), {args.duration:g} s a scenario after"
        f" a 2 s warm-up; a warm-up turn of {args.warmup:g} s a scenario per scale, not reported. *-paced: one request per client every"
        f" {args.pace_ms:g} ms ({args.concurrency * 1000 / args.pace_ms:g} req/s offered); the others closed loop. queue-*: `GET /api/v1/queue?limit=50`"
        " (member: the caller's team; admin: all); get-queued: `GET /api/v1/runs/{id}` of random queued runs of the caller's team; submit:"
        " `POST /api/v1/runs` (one seed, on `cpu`); list-member: `GET /api/v1/runs?limit=50`. API CPU ms/req: the API processes' user +"
        " system CPU over the turn per request served (warm-ups included), all scenarios of the turn together; PG: the PostgreSQL backends of"
        " the API's connections.",
        "",
        "| queued (start) | runs (end) | turn | load (1, 5, 15 min) | scenario | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms | API CPU ms/req | PG CPU ms/req |",
        "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in turns:
        for r in t["results"]:
            lines.append(
                f"| {t['queued']:,} | {t['runs']:,} | {t['round']} | {t['load']} | {r['scenario']} | {r['requests']:,} | {r['errors']} | {r['rps']:,.1f} "
                f"| {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {t['api_cpu_ms']:.2f} | {t['pg_cpu_ms']:.2f} |"
            )
    lines += [
        "",
        f"Control ticks during each turn (from its first request to its last answer), across the {args.control_workers} control workers, from their logs"
        f" (Celery's `succeeded in` lines). Expected from beat alone: one forecast every {forecast_s:g} s, one janitor pass every {janitor_s:g} s; scheduler"
        " ticks: beat's every 5 s plus those submits ask for (CADDIE_ON_SUBMIT_HOOK, coalesced). Durations median / max; gaps between the starts of consecutive"
        " ticks (the end less the duration), whichever worker ran them, min / median / max.",
        "",
        "| queued (start) | turn | span s | forecast ticks (by worker) | forecast ms | forecast gaps s | schedule ticks (by worker) | schedule ms | janitor ticks (by worker) | janitor ms | janitor gaps s | forecast stored (covers) |",
        "|---:|---:|---:|---|---:|---|---|---:|---|---:|---|---:|",
    ]

    def by(stats: TickStats) -> str:
        return f"{stats.count} ({', '.join(f'{w} {n}' for w, n in sorted(stats.by_worker.items())) or '-'})"

    for t in turns:
        f, s, j = (t["ticks"][k] for k in ("forecast", "schedule", "janitor"))
        lines.append(
            f"| {t['queued']:,} | {t['round']} | {t['span_s']:.0f} | {by(f)} (expected ~{t['span_s'] / forecast_s:.0f}) | {_ms(f.seconds)} | {_gaps(f.gaps)} "
            f"| {by(s)} | {_ms(s.seconds)} | {by(j)} (expected ~{t['span_s'] / janitor_s:.0f}) | {_ms(j.seconds)} | {_gaps(j.gaps)} | {t['covers']:,} |"
        )
    errors = [f"- {t['queued']:,} queued, turn {t['round']}, {r['scenario']}: {r['first_error']}" for t in turns for r in t["results"] if r["first_error"]]
    if errors:
        lines += ["", "First error per scenario:", *errors]
    lines.append(f"\nRuns by status at the end: {', '.join(f'{k} {v:,}' for k, v in sorted(turns[-1]['statuses'].items()))}." if turns else "")
    return "\n".join(lines).rstrip() + "\n"


def add_section(path: Path, text_: str) -> None:
    """``text_`` under the file's title (its sections run newest first), or a new file."""
    old = path.read_text() if path.exists() else "# API load benchmark\n"
    title, _, rest = old.partition("\n")
    path.write_text(f"{title}\n\n{text_}\n{rest.lstrip(chr(10))}")


# --- the benchmark ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help="PostgreSQL URL allowed to CREATE DATABASE")
    ap.add_argument("--scales", default="10000,50000,100000", help="queued runs at each scale, in turn (rising: each adds to the last)")
    ap.add_argument("--history", type=int, default=10_000, help="finished runs seeded with the first scale")
    ap.add_argument("--teams", type=int, default=50)
    ap.add_argument("--replicas", type=int, default=2, help="API replicas")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes per replica")
    ap.add_argument("--control-workers", type=int, default=2, help="Celery workers on the control queue")
    ap.add_argument("--runs-workers", type=int, default=1, help="Celery workers on the runs queue")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per scenario")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds per scenario of each scale's warm-up turn (0: none)")
    ap.add_argument("--rounds", type=int, default=1, help="reported turns per scale")
    ap.add_argument("--max-requests", type=int, default=50_000)
    ap.add_argument("--scenarios", default="queue-member-paced,queue-admin-paced,get-queued,submit,list-member-paced")
    ap.add_argument("--pace-ms", type=float, default=400.0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_load.md")
    args = ap.parse_args(argv)
    args.scales = sorted(int(q) for q in args.scales.split(","))
    args.load_at_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    command = " ".join(["python -m bench.scale_out", shlex.join(argv if argv is not None else sys.argv[1:])]).strip()

    root = Path(tempfile.mkdtemp(prefix="caddie-scale-"))
    os.chmod(root, 0o755)
    home = root / "home"
    home.mkdir()
    (home / "stand_in.py").write_text(STAND_IN)
    redis = Redis(root)
    url = create_database(args.admin_url)
    print(f"database {url}, home {home}", file=sys.stderr)
    stack: Stack | None = None
    held: list[int] = []
    tokens: dict[str, str] = {}
    turns: list[dict] = []
    seeding: list[str] = []
    try:
        redis.start()
        tokens = bootstrap(url)  # migrates; the holders' team
        stack, apis = make_stack(home, url, redis.url, args)
        stack.start()
        for name, port in apis:
            wait_until_healthy(stack.procs[name], port)
        held = hold_slots(stack.url, tokens["a"], iterations=100_000, limit_s=90)  # they outlast the benchmark (cancelled at the end)
        seeded = None
        for queued in args.scales:
            since = datetime.now(UTC)
            if seeded is None:  # the first scale: accounts, history and backlog, after the holders run (or a tick would start the backlog first)
                seeded = seed_database(url, args.history + queued, args.teams, queued, hardware=HARDWARE, active=False)
                seeding.append(f"{args.history + queued:,} runs seeded in {seeded.seconds:.0f} s")
            else:  # up to this scale's backlog: the submit scenario's runs, queued too, count towards it
                extra = max(0, queued - sum(map(len, queued_ids_by_team(url).values())))
                seeding.append(f"{extra:,} queued added in {add_queued(url, seeded, extra, HARDWARE):.0f} s")
            ids = queued_ids_by_team(url)
            covers, waited = wait_for_forecast(url, since, sum(map(len, ids.values())))
            print(f"{queued:,} queued: forecast of {covers:,} stored after {waited:.0f} s", file=sys.stderr)
            plan = {
                "urls": [f"http://127.0.0.1:{port}" for _, port in apis],
                "member_tokens": seeded.member_tokens,
                "member_queued": [ids.get(team, []) for team in seeded.member_teams],
                "admin_tokens": [seeded.admin_token],
                "scenarios": [s.strip() for s in args.scenarios.split(",") if s.strip()],
                "concurrency": args.concurrency,
                "max_requests": args.max_requests,
                "pace_ms": args.pace_ms,
                "hardware": HARDWARE,
            }
            for round_no in range(0 if args.warmup else 1, args.rounds + 1):
                load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
                print(f"{queued:,} queued, turn {round_no}{' (warm-up)' if not round_no else ''} (load {load})", file=sys.stderr)
                procs = [stack.procs[name] for name, _ in apis]
                cpu_before, t0 = cpu_seconds(procs, url), time.time()
                results = _drive_once({**plan, "duration": args.duration if round_no else args.warmup})
                t1, cpu_after = time.time(), cpu_seconds(procs, url)
                if not round_no:
                    continue
                time.sleep(1)  # a tick that ended in the turn is in its worker's log
                logs = {path.stem.removeprefix("control-worker-"): task_runs(path) for path in sorted(home.glob("control-worker-*.log"))}
                served = max(1, sum(r["requests"] + r["warmup_requests"] for r in results))
                api_ms, pg_ms, _ = (1000 * (b - a) / served for a, b in zip(cpu_before, cpu_after, strict=True))
                statuses = status_counts(url)
                turns.append({
                    "queued": sum(map(len, ids.values())), "runs": sum(statuses.values()), "round": round_no, "load": load,
                    "results": results, "api_cpu_ms": api_ms, "pg_cpu_ms": pg_ms, "span_s": t1 - t0,
                    "ticks": tick_stats({f"control{w}": runs for w, runs in logs.items()}, t0, t1), "covers": covers, "statuses": statuses,
                })  # fmt: skip
        restarts = dict(stack.restarts)
        add_section(args.out, section(args, command, turns, pg_version(url), restarts, seeding))
        print(f"wrote a section of {args.out}", file=sys.stderr)
    finally:
        if stack is not None:
            release_slots(stack.url, tokens.get("a", ""), held, home)
            stack.stop()
        redis.kill9()
        from service.core.db import dispose_engines

        dispose_engines()
        drop_database(args.admin_url, url)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
