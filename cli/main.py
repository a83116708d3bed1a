"""``caddie``: the command line.

Bootstrap commands (``caddie admin ...``, ``caddie db upgrade``) work on the
database directly (CADDIE_DATABASE_URL) through the service's domain functions;
everything else talks to the REST API with a token (CADDIE_URL, CADDIE_TOKEN,
or the config file written by ``caddie login``). Every failure is one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import getpass
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import typer
from rich.console import Console
from rich.markup import escape

from cli.artifacts import artifacts_table, download_run
from cli.client import CaddieClient, CaddieError, load_config, write_config_file
from cli.doctor import missing_sqlite_file
from cli.follow import describe_submission, follow_runs, tail_log
from cli.render import print_results, run_detail, runs_table, status_text
from cli.render_queue import queue_table
from cli.render_results import (
    comparison_panel,
    group_detail,
    groups_table,
    leaderboard_table,
)
from cli.spec import build_request, read_spec_file
from cli.sweeps import sweep_commands
from service.core.status import RunStatus
from service.core.text import printable

app = typer.Typer(
    name="caddie",
    help="Run Parameter Golf training runs on scarce 8xH100 nodes.",
    no_args_is_help=True,
    # A traceback with locals could show the token; failures we expect never get that far.
    pretty_exceptions_show_locals=False,
)
admin_app = typer.Typer(help="Bootstrap teams, users and tokens directly in the database.", no_args_is_help=True)
records_app = typer.Typer(help="The challenge's public records (the frontier), straight to the database.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
token_app = typer.Typer(help="Your API tokens (as on the web's tokens page).", no_args_is_help=True)
team_app = typer.Typer(help="Teams: members, invitations.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(records_app, name="records")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(team_app, name="team")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn a CaddieError into ``error: message`` on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CaddieError as exc:
            err.print(f"error: {printable(str(exc))}", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def api() -> Iterator[CaddieClient]:
    client = CaddieClient.from_config(load_config())
    try:
        yield client
    finally:
        client.close()


app.add_typer(sweep_commands(friendly, api, out), name="sweep")


# --- talking to the API -------------------------------------------------------------------
@app.command()
@friendly
def login(
    url: Annotated[str, typer.Option(help="caddie's base URL")] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(help="API token (asked for when left out)")] = None,
    check: Annotated[bool, typer.Option(help="check the token against the server before saving")] = True,
) -> None:
    """Save the URL and token to the config file (mode 0600)."""
    token = token or getpass.getpass("API token: ").strip()
    if not token:
        raise CaddieError("no token given")
    who = ""
    if check:
        with CaddieClient(url, token) as client:
            me = client.me()
        who = f" as {printable(me['name'])}"
    path = write_config_file(url.rstrip("/"), token)
    out.print(f"logged in{who} at {url}; saved to {path}", markup=False)


@app.command()
@friendly
def submit(
    spec_file: Annotated[Path | None, typer.Argument(metavar="[SPEC.yaml]", help="run spec (YAML); optional with --script")] = None,
    seeds: Annotated[str | None, typer.Option(help="comma-separated seeds, e.g. 1337,42,2025 (replaces the file's)")] = None,
    team: Annotated[str | None, typer.Option(help="team name (replaces the file's)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KNOB=VALUE", help="override one trainer knob; repeatable")] = None,
    script: Annotated[Path | None, typer.Option(help="run your own challenge-format train_gpt.py instead of the shared trainer")] = None,
    file: Annotated[list[Path] | None, typer.Option(metavar="PATH", help="a file the script needs beside it (in its folder); repeatable")] = None,
    env: Annotated[list[str] | None, typer.Option(metavar="NAME=VALUE", help="an env var for the script; repeatable")] = None,
    data: Annotated[str | None, typer.Option(help="the script's data variant: sp1024, sp4096, sp8192, ...")] = None,
    name: Annotated[str | None, typer.Option(help="run name (default with --script: the script's folder name)")] = None,
    track: Annotated[str | None, typer.Option(help="10min_16mb or unlimited (default with --script: 10min_16mb)")] = None,
    hardware: Annotated[str | None, typer.Option(help="e.g. H100:8 (default with --script: H100:8)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="show live progress until the runs finish")] = False,
) -> None:
    """Submit a run spec: one run per seed, all in one group. A script run needs no spec file:
    caddie submit --script records/.../train_gpt.py --data sp1024 --seeds 1337,42,2025"""
    if spec_file is not None:
        spec = read_spec_file(spec_file)
    elif script is not None:
        spec = {"name": script.resolve().parent.name, "track": "10min_16mb", "hardware": "H100:8"}
    else:
        raise CaddieError("give a spec file (SPEC.yaml) or --script PATH")
    spec.update({k: v for k, v in {"name": name, "track": track, "hardware": hardware}.items() if v is not None})
    body = build_request(spec, seeds=seeds, team=team, overrides=set_, script=script, files=file, env=env, data=data)
    # One key per invocation: the client's retries of this POST reuse it, so
    # the server returns the first attempt's runs instead of making new ones.
    key = uuid.uuid4().hex
    with api() as client:
        created = client.submit(body, idempotency_key=key)
        out.print(printable(describe_submission(created)), markup=False)
        if not follow:
            out.print(runs_table(created["runs"]))
            return
        final = follow_runs(client, [r["id"] for r in created["runs"]], out)
    print_results(out, final)
    if any(r["status"] != RunStatus.SUCCEEDED for r in final):
        raise typer.Exit(1)


@app.command()
@friendly
def follow(run_ids: Annotated[list[int], typer.Argument(metavar="RUN_ID...", help="the runs to follow (the ids submit printed)")]) -> None:
    """Show live progress of runs until they finish, then their results (exit 1 if one did not succeed)."""
    with api() as client:
        final = follow_runs(client, run_ids, out)
    print_results(out, final)
    if any(r["status"] != RunStatus.SUCCEEDED for r in final):
        raise typer.Exit(1)


@app.command("runs")
@friendly
def list_runs(
    status: Annotated[str | None, typer.Option(help="QUEUED, RUNNING, ... (comma-separated)")] = None,
    team: Annotated[str | None, typer.Option(help="team name")] = None,
    user: Annotated[str | None, typer.Option(help="user name")] = None,
    group: Annotated[str | None, typer.Option(help="group key")] = None,
    q: Annotated[str | None, typer.Option(help="text in name or notes")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="runs per page")] = 50,
    all_: Annotated[bool, typer.Option("--all", help="every matching run, page after page")] = False,
) -> None:
    """List runs, newest first."""
    filters = {"status": status, "team": team, "user": user, "group": group, "q": q}
    runs: list[dict[str, Any]] = []
    cursor = None
    with api() as client:
        while True:
            page = client.list_runs(**filters, limit=limit, cursor=cursor)
            runs += page["items"]
            cursor = page["next_cursor"]
            if not all_ or cursor is None:
                break
    if not runs:
        out.print("no runs", markup=False)
        return
    out.print(runs_table(runs))
    if cursor is not None:
        out.print(f"showing the newest {len(runs)}; more with --all or --limit", markup=False, style="dim")


@app.command()
@friendly
def show(run_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """One run: details, results and its last events."""
    with api() as client:
        run = client.get_run(run_id)
        events = client.events(run_id)
        metrics = client.metrics(run_id)
    out.print(run_detail(run, events, metrics))


@app.command("queue")
@friendly
def queue(
    team: Annotated[str | None, typer.Option(help="only this team's runs")] = None,
    limit: Annotated[int | None, typer.Option(min=1, max=1000, help="runs a page (the server's default: 1,000)")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="every page, not only the first")] = False,
) -> None:
    """Your teams' queued runs, soonest expected start first: position, estimated start, why each waits."""
    with api() as client:
        items, more = client.queue(team, limit=limit, all_pages=all_pages)
    if not items:
        out.print("nothing queued", markup=False)
        return
    out.print(queue_table(items))
    if more:
        out.print(f"{len(items)} shown; more with --all", markup=False)
    out.print("position: place on its hardware counting every team's runs; start: the scheduler's policy played forward, "
              "each run taking its time cap", markup=False, style="dim")  # fmt: skip


# The cancel waits this long for the worker to stop a running job, to say how it ended.
CANCEL_WAIT_S = 5.0


@app.command()
@friendly
def cancel(run_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Cancel a run (queued: at once; running: the worker stops it) and say what happened."""
    with api() as client:
        run = client.cancel(run_id, wait_s=CANCEL_WAIT_S)
    if run.get("cancel_note"):  # servers that say the outcome
        out.print(f"run {run_id}: {status_text(run['status'])}: {escape(run['cancel_note'])}")
    elif run["status"] == RunStatus.CANCELLED:
        out.print(f"run {run_id}: {status_text('CANCELLED')}")
    else:
        out.print(f"run {run_id}: cancel requested while {status_text(run['status'])}; the worker will stop it")


@app.command()
@friendly
def logs(
    run_id: Annotated[int, typer.Argument(metavar="ID")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the run finishes")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="print control characters as they are (for a file; the default shows them as \\x1b)")] = False,
) -> None:
    """Print a run's log."""
    with api() as client:
        tail_log(client, run_id, sys.stdout, follow=follow, raw=raw)


@app.command("artifacts")
@friendly
def list_artifacts(run_id: Annotated[int, typer.Argument(metavar="RUN")]) -> None:
    """List a run's stored files: name, kind, size and sha256 (its first characters)."""
    with api() as client:
        items = client.artifacts(run_id)
    if not items:
        out.print(f"run {run_id} has no stored files (yet)", markup=False)
        return
    out.print(artifacts_table(items))


@app.command()
@friendly
def download(
    run_id: Annotated[int, typer.Argument(metavar="RUN")],
    out_dir: Annotated[Path | None, typer.Option("--out", metavar="DIR", help="folder to write to (default: ./run-RUN)")] = None,
    name: Annotated[str | None, typer.Option(help="only this file, e.g. model.int6.ptz (see caddie artifacts RUN)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite files that exist with other content")] = False,
) -> None:
    """Download a run's stored files (or one), each checked against the sha256 caddie recorded."""
    with api() as client:
        download_run(client, run_id, out_dir or Path(f"run-{run_id}"), name=name, force=force, out=out, err=err)


@app.command()
@friendly
def up(
    host: Annotated[str, typer.Option(help="address the API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port the API listens on")] = 8000,
) -> None:
    """Start caddie with embedded defaults: API, a worker and the scheduler (SQLite, no broker server, local launcher)."""
    # Imported here: the service must not depend on the worker package at import time.
    try:
        from worker.embedded import run_embedded
    except ImportError as exc:
        raise CaddieError(f"caddie up needs the worker (pip install 'caddie[worker]'): {exc}") from None
    run_embedded(host=host, port=port)


@app.command()
@friendly
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object: ok, and each check's name, status, detail and fix")] = False,
    min_free_gib: Annotated[float, typer.Option(min=0, help="the artifact store fails below this much free space (GiB)")] = 1.0,
) -> None:
    """Check what this deployment needs, each with pass/fail and its fix: the API and its version, the database at
    head, the broker, the workers, the launcher (the local sandbox, or SkyPilot's API server and credentials), the GPUs,
    each data variant's files, the artifact store. Reads this shell's CADDIE_* settings; exit 1 when a check fails."""
    from cli.doctor import as_json, as_lines, failed, run_checks

    checks = run_checks(load_config(), min_free_gib=min_free_gib)
    if json_out:
        sys.stdout.write(as_json(checks) + "\n")
    else:
        for line in as_lines(checks):
            out.print(printable(line), markup=False, soft_wrap=True)
    if failed(checks):
        raise typer.Exit(1)


# --- results: groups, significance, leaderboard ----------------------------------------------
@app.command()
@friendly
def groups(
    track: Annotated[str | None, typer.Option(help="10min_16mb or unlimited")] = None,
    hardware: Annotated[str | None, typer.Option(help="e.g. H100:8")] = None,
    team: Annotated[str | None, typer.Option(help="team name")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="groups to show")] = 100,
) -> None:
    """Your groups (one config over seeds) and published ones: n, mean and std of val_bpb, checks."""
    with api() as client:
        found = client.groups(track=track, hardware=hardware, team=team, limit=limit)
    if not found:
        out.print("no groups", markup=False)
        return
    out.print(groups_table(found))


@app.command()
@friendly
def group(
    key: Annotated[str, typer.Argument(metavar="KEY", help="group key or a prefix of 6+ characters")],
    baseline: Annotated[str | None, typer.Option(help="group to test against (default: your team's leader on the track)")] = None,
) -> None:
    """One group: per-seed table, rule checks, significance against the baseline, record eligibility."""
    with api() as client:
        out.print(group_detail(client.group(key, baseline)))


@app.command()
@friendly
def compare(
    group_a: Annotated[str, typer.Argument(metavar="GROUP_A", help="candidate group")],
    group_b: Annotated[str, typer.Argument(metavar="GROUP_B", help="baseline: a group, record:<folder> (a public record) or leader")],
    policy: Annotated[str, typer.Option(help="readme (0.005 nats at p < 0.01), maintainers (p < 0.25, no margin) or systems_only")] = "readme",
) -> None:
    """Does GROUP_A beat GROUP_B under the policy? Tested in nats per byte: difference, confidence interval, one-sided p."""
    with api() as client:
        out.print(comparison_panel(client.compare(group_a, group_b, policy)))


@app.command()
@friendly
def leaderboard(
    track: Annotated[str, typer.Option(help="10min_16mb or unlimited")] = "10min_16mb",
    hardware: Annotated[str | None, typer.Option(help="only this hardware, e.g. H100:8")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="rows")] = 50,
) -> None:
    """Groups you can see, ranked by mean val_bpb, with n, std, bytes, checks and eligibility."""
    with api() as client:
        board = client.leaderboard(track, hardware, limit)
    if not board["entries"]:
        out.print(f"no scored groups on {track} yet", markup=False)
        return
    out.print(leaderboard_table(board))


@app.command()
@friendly
def publish(
    key: Annotated[str, typer.Argument(metavar="KEY", help="group key or a prefix of 6+ characters")],
    undo: Annotated[bool, typer.Option("--undo", help="unpublish: only your team sees it again")] = False,
) -> None:
    """Make a group visible to every team on the leaderboard (--undo to take it back)."""
    with api() as client:
        g = client.publish(key, not undo)
    line = f"group {g['key'][:12]} ({g['name']}) is {'published: every team sees it' if g['published'] else 'private to ' + g['team']}"
    out.print(printable(line), markup=False)


# --- compute accounting ----------------------------------------------------------------------
@app.command()
@friendly
def usage(
    team: Annotated[str | None, typer.Option(help="team name (default: each of your teams)")] = None,
    period: Annotated[str, typer.Option(help="day, week or month (UTC)")] = "week",
    since: Annotated[str | None, typer.Option(help="start, e.g. 2025-03-01 (default: a few periods back)")] = None,
) -> None:
    """What your team's runs cost: GPU-hours and dollars per period, phase and user, the budget, a bar per day."""
    from cli.render_usage import print_usage

    if period not in ("day", "week", "month"):
        raise CaddieError(f"--period must be day, week or month, got {period!r}")
    with api() as client:
        teams = [team] if team else [t["team"] for t in client.me()["teams"]]
        if not teams:
            raise CaddieError("you are in no team: name one with --team")
        reports = [client.team_usage(name, period, since) for name in teams]
    for report in reports:
        print_usage(out, report)


# --- bootstrap, straight to the database ---------------------------------------------------
@contextmanager
def database() -> Iterator[Any]:
    """A session on CADDIE_DATABASE_URL that commits at the end; database
    problems become one-line errors."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

    from service.core.db import get_sessionmaker
    from service.core.errors import DomainError
    from service.core.settings import Settings

    settings = Settings()
    missing = missing_sqlite_file(settings.database_url)
    if missing is not None:
        # Opening it would create an empty database there (and its folder), which
        # then hides the real one; only `caddie db upgrade` and `caddie up` create it.
        raise CaddieError(f"no caddie database at {missing}; run `caddie up` or set CADDIE_DATABASE_URL")
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    session = get_sessionmaker(settings.database_url, settings)()
    try:
        yield session
        session.commit()
    except DomainError as exc:
        session.rollback()
        raise CaddieError(str(exc)) from None
    except (OperationalError, ProgrammingError) as exc:
        session.rollback()
        text = str(exc.orig).lower()
        if "no such table" in text or "does not exist" in text and "relation" in text:
            raise CaddieError(f"the database {shown} has no caddie tables: run caddie db upgrade") from None
        raise CaddieError(f"database {shown}: {str(exc.orig).strip().splitlines()[0]}") from None
    except SQLAlchemyError as exc:
        session.rollback()
        raise CaddieError(f"database {shown}: {type(exc).__name__}") from None
    finally:
        session.close()


@records_app.command("import")
@friendly
def records_import(
    path: Annotated[Path, typer.Argument(help="a clone of the challenge repository, its records/ folder, or ../shared/challenge")],
) -> None:
    """Store every record folder's per-seed figures and caddie's verdict on its logs; re-importing updates them."""
    from service.results.public_records import read_record, record_folders
    from service.results.records_store import import_records

    folders = record_folders(path)
    if not folders:
        raise CaddieError(f"no record folders under {path} (expected records/track_10min_16mb/<date>_<name>/)")
    records = [read_record(f) for f in folders]
    with database() as session:
        created, updated = import_records(session, records)
    seeds = sum(len(r.seeds) or len(r.logs) for r in records)
    out.print(f"{len(records)} public records from {path}: {created} new, {updated} updated ({seeds} seed figures read)")


# --- tokens and teams over the API ------------------------------------------------------------
@token_app.command("create")
@friendly
def token_create(
    name: Annotated[str, typer.Argument(help="what the token is for, e.g. laptop")],
    user: Annotated[str | None, typer.Option(help="global admins: make it for this user")] = None,
) -> None:
    """Create an API token and print it (the only time it is shown)."""
    with api() as client:
        made = client.request("POST", "/api/v1/tokens", json_body={"name": name, "user": user})
    out.print(made["token"], markup=False, soft_wrap=True)
    err.print(f"token #{made['id']}: store it now, caddie keeps only its hash", markup=False)


@token_app.command("list")
@friendly
def token_list() -> None:
    """Your API tokens: id, name, prefix, created, last used, revoked (web sign-ins: caddie token sessions)."""
    with api() as client:
        rows = client.request("GET", "/api/v1/tokens")
    for t in rows:
        state = f"revoked {t['revoked_at']}" if t.get("revoked_at") else f"last used {t.get('last_used_at') or 'never'}"
        out.print(printable(f"#{t['id']}  {t['name']}  {t['prefix']}...  created {t['created_at']}  {state}"), markup=False)


@token_app.command("sessions")
@friendly
def token_sessions() -> None:
    """Your signed-in browsers: id, which token signed in, created, last used, expires (caddie token revoke ID ends one)."""
    with api() as client:
        rows = client.request("GET", "/api/v1/tokens/sessions")
    for t in rows:
        out.print(printable(f"#{t['id']}  {t['name']}  created {t['created_at']}  last used {t.get('last_used_at') or 'never'}  "
                            f"expires {t['expires_at']}"), markup=False)  # fmt: skip


@token_app.command("revoke")
@friendly
def token_revoke(token_id: Annotated[int, typer.Argument(metavar="ID", help="the token's id (caddie token list or sessions)")]) -> None:
    """Revoke a token (and the web sessions signed in with it), or end a web session."""
    with api() as client:
        client.request("DELETE", f"/api/v1/tokens/{token_id}", not_found=f"token {token_id} not found")
    out.print(f"token #{token_id} revoked", markup=False)


@team_app.command("list")
@friendly
def team_list() -> None:
    """Your teams and their members; your pending invitations."""
    with api() as client:
        teams = client.request("GET", "/api/v1/teams")
        me = client.request("GET", "/api/v1/users/me")
    for t in teams:
        members = ", ".join(f"{m['user']} ({m['role']})" for m in t.get("members", []))
        hook = f"; webhook {t['webhook']}" if t.get("webhook") else ""
        out.print(printable(f"{t['name']}: {members or 'no members'}{hook}"), markup=False)
    for inv in me.get("invitations", []):
        out.print(printable(f"invited to {inv['team']} as {inv['role']}: caddie team accept {inv['team']} (or decline)"), markup=False)


@team_app.command("invite")
@friendly
def team_invite(
    team: Annotated[str, typer.Argument(help="your team")],
    user: Annotated[str, typer.Argument(help="the user to invite")],
    role: Annotated[str, typer.Option(help="member or admin")] = "member",
) -> None:
    """Invite USER to TEAM (team admins; the user joins on `caddie team accept`; global admins add at once)."""
    with api() as client:
        client.request("POST", f"/api/v1/teams/{team}/members", json_body={"user": user, "role": role}, not_found=f"team {team} not found")
    out.print(printable(f"{user} invited to {team} as {role} (if that user exists); they join with: caddie team accept {team}"), markup=False)


@team_app.command("accept")
@friendly
def team_accept(team: Annotated[str, typer.Argument(help="the team that invited you")]) -> None:
    """Accept your invitation to TEAM."""
    with api() as client:
        client.request("POST", f"/api/v1/teams/{team}/accept", not_found=f"no invitation to team {team}")
    out.print(printable(f"you are now a member of {team}"), markup=False)


@team_app.command("decline")
@friendly
def team_decline(team: Annotated[str, typer.Argument(help="the team that invited you")]) -> None:
    """Decline your invitation to TEAM."""
    with api() as client:
        client.request("POST", f"/api/v1/teams/{team}/decline", not_found=f"no invitation to team {team}")
    out.print(printable(f"invitation to {team} declined"), markup=False)


@team_app.command("remove")
@friendly
def team_remove(
    team: Annotated[str, typer.Argument(help="your team")],
    user: Annotated[str, typer.Argument(help="the member to remove (your own name: leave the team)")],
) -> None:
    """Remove USER from TEAM (team admins; any member may remove themself). The last admin stays."""
    with api() as client:
        client.request("DELETE", f"/api/v1/teams/{quote(team, safe='')}/members/{quote(user, safe='')}")
    out.print(printable(f"{user} is no longer a member of {team}"), markup=False)


@team_app.command("webhook")
@friendly
def team_webhook(
    team: Annotated[str, typer.Argument(help="your team")],
    url: Annotated[str | None, typer.Argument(help="http(s) URL to POST notifications to (a Slack or Discord webhook works)")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="stop sending notifications")] = False,
) -> None:
    """Set where TEAM's notifications go (team admins): runs, groups and sweeps that finish, fail or become record-eligible."""
    if (url is None) == (not remove):
        raise CaddieError("give a URL, or --remove")
    with api() as client:
        row = client.request("PATCH", f"/api/v1/teams/{team}", json_body={"webhook_url": None if remove else url}, not_found=f"team {team} not found")
    shown = row.get("webhook")
    out.print(printable(f"{team}: notifications go to {shown}" if shown else f"{team}: no webhook"), markup=False)


@admin_app.command("create-team")
@friendly
def create_team(
    name: str,
    budget_gpu_hours: Annotated[float | None, typer.Option(help="GPU-hour budget (none: unlimited)")] = None,
    weight: Annotated[float, typer.Option(help="fair-share weight")] = 1.0,
) -> None:
    """Create a team."""
    from service.teams import accounts

    with database() as session:
        team = accounts.create_team(session, name, budget_gpu_hours=budget_gpu_hours, weight=weight)
        team_id = team.id
    out.print(f"team {name} created (id {team_id})", markup=False)


@admin_app.command("set-budget")
@friendly
def set_budget(
    team: str,
    gpu_hours: Annotated[float | None, typer.Option("--gpu-hours", help="GPU-hours per budget period")] = None,
    no_budget: Annotated[bool, typer.Option("--no-budget", help="remove the budget (unlimited)")] = False,
    weight: Annotated[float | None, typer.Option(help="fair-share weight")] = None,
) -> None:
    """Change a team's GPU-hour budget and/or fair-share weight."""
    from service.teams import accounts

    if gpu_hours is not None and no_budget:
        raise CaddieError("give --gpu-hours or --no-budget, not both")
    changes: dict[str, float | None] = {}
    if gpu_hours is not None or no_budget:
        changes["budget_gpu_hours"] = gpu_hours
    if weight is not None:
        changes["weight"] = weight
    if not changes:
        raise CaddieError("nothing to change: give --gpu-hours N, --no-budget or --weight W")
    with database() as session:
        row = accounts.update_team(session, accounts.get_team(session, team), **changes)
        budget, new_weight = row.budget_gpu_hours, row.weight
    shown = "none" if budget is None else f"{budget:g} GPU-hours"
    out.print(f"team {team}: budget {shown}, weight {new_weight:g}", markup=False)


@admin_app.command("create-user")
@friendly
def create_user(
    name: str,
    team: Annotated[str | None, typer.Option(help="add the user to this team")] = None,
    role: Annotated[str, typer.Option(help="role in --team: member or admin")] = "member",
    admin: Annotated[bool, typer.Option("--admin", help="make a global admin (sees every team)")] = False,
    email: Annotated[str | None, typer.Option(help="email address")] = None,
) -> None:
    """Create a user, optionally in a team."""
    from service.teams import accounts

    if role not in accounts.ROLES:
        raise CaddieError(f"--role must be one of {', '.join(accounts.ROLES)}, got {role!r}")
    with database() as session:
        user = accounts.create_user(session, name, email=email, is_admin=admin)
        if team is not None:
            accounts.add_member(session, team, user, role)
        user_id = user.id
    where = f" in team {team} as {role}" if team else ""
    out.print(f"user {name} created (id {user_id}){where}{' (global admin)' if admin else ''}", markup=False)


@admin_app.command("create-token")
@friendly
def create_token(
    user: str,
    name: Annotated[str, typer.Option(help="what the token is for")] = "cli",
) -> None:
    """Create an API token for USER and print it (the only time it is shown)."""
    from service.teams import accounts

    with database() as session:
        _row, secret = accounts.create_token(session, user, name)
    out.print(secret, markup=False, soft_wrap=True)
    err.print("store it now: caddie keeps only its hash (e.g. caddie login --token ...)", markup=False)


@db_app.command("upgrade")
@friendly
def db_upgrade(revision: Annotated[str, typer.Option(help="Alembic revision")] = "head") -> None:
    """Migrate CADDIE_DATABASE_URL to REVISION."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from service.core.migrate import upgrade
    from service.core.settings import Settings

    url = Settings().database_url
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        upgrade(url, revision)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        raise CaddieError(f"database {shown}: {str(orig).strip().splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001 - Alembic raises CommandError and friends for bad revisions
        raise CaddieError(f"migration to {revision} failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    out.print(f"database {shown} is at {revision}", markup=False)



# --- records/ export -------------------------------------------------------------------------
@app.command("export")
@friendly
def export_group(
    group: Annotated[str, typer.Argument(metavar="GROUP", help="group key, or a prefix of at least 6 characters")],
    out_dir: Annotated[Path, typer.Option("--out", help="where records/track_<track>/<date>_<name>/ goes (e.g. a clone of the challenge repository)")] = Path("."),
    override: Annotated[str | None, typer.Option(help="why a group that is not record-eligible is exported anyway (written into README.md and submission.json)")] = None,
    baseline: Annotated[str | None, typer.Option(help="baseline group key for the p-value (default: the team's leader on the track)")] = None,
    github_id: Annotated[str | None, typer.Option("--github-id", help="GitHub user name for submission.json")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite the files of an existing, non-empty folder")] = False,
) -> None:
    """Export a group as a records/ folder ready for a pull request to the challenge."""
    from cli.records import unpack_records

    with api() as client:
        data = client.export_group(group, override=override, baseline=baseline, github_id=github_id)
    folder, files = unpack_records(data, out_dir, force=force)
    out.print(printable(f"wrote {folder}"), markup=False)
    for name, size in files:
        out.print(printable(f"  {name:<28} {size:>12,} bytes"), markup=False)


if __name__ == "__main__":
    app()
