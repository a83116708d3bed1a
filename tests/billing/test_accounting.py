"""Accounting: billed GPU-seconds and cost per run, phase, period, user and team
(service/billing/accounting.py), GET /teams/{name}/usage and PATCH /teams/{name}.

The figures are checked against values computed by hand in the comments: the
pure functions with plain values, the endpoint on PostgreSQL and SQLite."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.billing.accounting import (
    Attempt,
    RunRecord,
    Transition,
    billed_attempts,
    default_since,
    next_period,
    period_start,
    price_per_gpu_hour,
    usage_report,
    warm_start_savings,
)
from service.core.models import Run, RunEvent
from service.core.settings import Settings, parse_gpu_prices
from service.teams import accounts
from tests.factories import make_run

PRICES = {"H100": 2.99, "H200": 3.79, "cpu": 0.0}
T0 = datetime(2025, 3, 3, 10, 0, tzinfo=timezone.utc)  # a Monday


def m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def events(*steps: tuple[float, str]) -> tuple[Transition, ...]:
    return tuple(Transition(m(at), to) for at, to in steps)


# Preempted once, then succeeded. Attempt 1: provisioning 1->6 min (300 s), running
# 6->16 (600 s, lost: requeued). Attempt 2: provisioning 20->24 (240 s), running
# 24->44 (1200 s = 600 training + 120 evaluation + 480 setup). 2340 s x 8 GPUs =
# 18720 GPU-s = 5.2 GPU-h = $15.548 at $2.99.
REQUEUED = events((0, "QUEUED"), (1, "PROVISIONING"), (6, "RUNNING"), (16, "QUEUED"), (20, "PROVISIONING"), (24, "RUNNING"), (44, "SUCCEEDED"))
# Cancelled while running: provisioning 2->10 (480 s), setup 10->15 (300 s): 780 s x 8 = 6240 GPU-s.
CANCELLED = events((0, "QUEUED"), (2, "PROVISIONING"), (10, "RUNNING"), (15, "CANCELLED"))
NEVER_STARTED = events((0, "QUEUED"))
CANCELLED_IN_QUEUE = events((0, "QUEUED"), (3, "CANCELLED"))


def records() -> list[RunRecord]:
    return [
        RunRecord(1, "alice", "H100:8", REQUEUED, train_seconds=600, eval_seconds=120, name="requeued", status="SUCCEEDED"),
        RunRecord(2, "aaron", "H100:8", CANCELLED, name="cancelled", status="CANCELLED"),
        RunRecord(3, "alice", "H100:8", NEVER_STARTED, name="queued", status="QUEUED"),
        RunRecord(4, "alice", "H100:8", CANCELLED_IN_QUEUE, name="gone", status="CANCELLED"),
        RunRecord(5, "alice", "cpu", CANCELLED, name="on cpu", status="CANCELLED"),
    ]


# --- pure ------------------------------------------------------------------------------------
def test_attempts_of_a_requeued_run():
    assert billed_attempts(REQUEUED) == [Attempt(m(1), m(6), m(16), requeued=True), Attempt(m(20), m(24), m(44))]
    assert billed_attempts(NEVER_STARTED) == [] and billed_attempts(CANCELLED_IN_QUEUE) == []
    # Still provisioning: billed until now (released_at None).
    assert billed_attempts(events((0, "QUEUED"), (1, "PROVISIONING"))) == [Attempt(m(1), None, None)]
    # Failed while provisioning: all of it is provisioning.
    assert billed_attempts(events((1, "PROVISIONING"), (3, "FAILED"))) == [Attempt(m(1), None, m(3))]


def test_report_figures_by_hand():
    report = usage_report(records(), PRICES, period="week", since=m(-60), now=m(120))
    by_id = {r.id: r.figures for r in report.runs}
    assert sorted(by_id) == [1, 2]  # the queued run, the one cancelled in the queue and the cpu run cost nothing
    a = by_id[1]
    assert a.gpu_seconds == pytest.approx(18720)
    assert a.gpu_hours == pytest.approx(5.2)
    assert a.cost == pytest.approx(15.548)
    assert a.phases == pytest.approx({"provisioning": 540 * 8, "requeued": 600 * 8, "training": 600 * 8, "evaluation": 120 * 8, "setup": 480 * 8})
    assert a.phase_cost["training"] == pytest.approx(600 * 8 / 3600 * 2.99)
    b = by_id[2]
    assert b.gpu_seconds == pytest.approx(6240)
    assert b.phases == pytest.approx({"provisioning": 3840, "setup": 2400, "training": 0, "evaluation": 0, "requeued": 0})
    assert report.total.gpu_seconds == pytest.approx(18720 + 6240)
    assert report.total.cost == pytest.approx((18720 + 6240) / 3600 * 2.99)
    assert {u: f.gpu_seconds for u, f in report.users.items()} == pytest.approx({"aaron": 6240, "alice": 18720})
    assert list(report.periods) == [date(2025, 3, 3)]
    assert report.periods[date(2025, 3, 3)].gpu_seconds == pytest.approx(24960)
    assert report.unpriced == []


def test_window_clips_and_live_runs_bill_until_now():
    # Window starts at minute 20: run 1 keeps its second attempt (1440 s x 8), run 2 nothing.
    report = usage_report(records(), PRICES, period="day", since=m(20), now=m(120))
    assert report.total.gpu_seconds == pytest.approx(1440 * 8)
    live = RunRecord(9, "alice", "H200:8", events((0, "QUEUED"), (10, "PROVISIONING"), (15, "RUNNING")))
    report = usage_report([live], PRICES, period="day", since=m(0), now=m(25))
    # 5 min provisioning + 10 min running (setup until the result comes) x 8 GPUs at $3.79.
    assert report.total.phases["provisioning"] == pytest.approx(300 * 8)
    assert report.total.phases["setup"] == pytest.approx(600 * 8)
    assert report.total.cost == pytest.approx(900 * 8 / 3600 * 3.79)


def test_split_at_midnight_and_week_boundary():
    # Sunday 23:50 -> provisioning to Monday 00:10, running to 01:10 (3000 s training), one GPU.
    sunday = datetime(2025, 3, 9, 23, 50, tzinfo=timezone.utc)
    run = RunRecord(1, "alice", "H100:1", (Transition(sunday, "PROVISIONING"), Transition(sunday + timedelta(minutes=20), "RUNNING"),
                                           Transition(sunday + timedelta(minutes=80), "SUCCEEDED")), train_seconds=3000)
    now = sunday + timedelta(days=1)
    report = usage_report([run], PRICES, period="week", since=sunday - timedelta(days=1), now=now)
    assert report.days[date(2025, 3, 9)].gpu_seconds == pytest.approx(600)
    assert report.days[date(2025, 3, 9)].phases["provisioning"] == pytest.approx(600)
    assert report.days[date(2025, 3, 10)].gpu_seconds == pytest.approx(600 + 3600)
    assert report.days[date(2025, 3, 10)].phases["training"] == pytest.approx(3000)
    assert report.periods[date(2025, 3, 3)].gpu_seconds == pytest.approx(600)
    assert report.periods[date(2025, 3, 10)].gpu_seconds == pytest.approx(4200)


def test_periods_and_prices():
    assert period_start(date(2025, 3, 9), "week") == date(2025, 3, 3)
    assert period_start(datetime(2025, 3, 9, 23, tzinfo=timezone.utc), "month") == date(2025, 3, 1)
    assert next_period(date(2025, 1, 1), "month") == date(2025, 2, 1)
    assert next_period(date(2024, 12, 1), "month") == date(2025, 1, 1)
    assert default_since(datetime(2025, 3, 5, 12, tzinfo=timezone.utc), "week") == datetime(2025, 2, 10, tzinfo=timezone.utc)
    assert default_since(datetime(2025, 3, 5, 12, tzinfo=timezone.utc), "month") == datetime(2025, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        period_start(date(2025, 1, 1), "year")
    assert price_per_gpu_hour("H100:8", PRICES) == 2.99
    assert price_per_gpu_hour("H100:8", {**PRICES, "H100:8": 2.5}) == 2.5
    assert price_per_gpu_hour("B200:8", PRICES) is None
    report = usage_report([RunRecord(1, "alice", "B200:8", CANCELLED)], PRICES, period="day", since=m(0), now=m(60))
    assert report.unpriced == ["B200:8"] and report.total.cost == 0 and report.total.gpu_seconds == pytest.approx(6240)


def test_price_settings_are_checked_at_start():
    assert parse_gpu_prices(" H100=2.99 , cpu=0,") == {"H100": 2.99, "cpu": 0.0}
    assert Settings(gpu_prices="H200:8=30").gpu_price_table == {"H200:8": 30.0}
    for bad, says in [("H100", "expected ACCELERATOR="), ("=3", "expected ACCELERATOR="), ("H100=-1", ">= 0"),
                      ("H100=nan", "finite"), ("H100=inf", "finite"), ("H100=cheap", "finite"), ("H100=1,H100=2", "twice")]:
        with pytest.raises(ValidationError, match="CADDIE_GPU_PRICES") as info:
            Settings(gpu_prices=bad)
        assert says in str(info.value)


def test_warm_starts_and_the_provisioning_they_saved():
    def run(run_id: int, hardware: str, provisioned: float, running: float, warm: bool | None) -> RunRecord:
        steps = events((provisioned - 1, "QUEUED"), (provisioned, "PROVISIONING"), (running, "RUNNING"), (running + 10, "SUCCEEDED"))
        return RunRecord(run_id, "alice", hardware, steps, name=f"r{run_id}", status="SUCCEEDED", warm_start=warm)

    runs = [
        run(1, "H100:8", 1, 5, False),  # cold: 240 s of provisioning
        run(2, "H100:8", 1, 9, False),  # cold: 480 s; the median of H100:8's cold starts is 360 s
        run(3, "H100:8", 1, 1.5, True),  # warm, 30 s: saved (360 - 30) x 8 = 2640 GPU-s
        run(4, "H200:8", 1, 2, True),  # warm, 60 s, no cold H200:8 start to measure: (300 - 60) x 8 = 1920 GPU-s
        run(5, "H100:8", -130, -125, True),  # warm, but started before the window
        run(6, "H100:8", 1, 21, None),  # unknown (before warm starts were recorded): in neither count
        # Requeued: only its last attempt is known warm (240 s): (360 - 240) x 8 = 960 GPU-s; the first one is in no count.
        RunRecord(7, "alice", "H100:8", REQUEUED, warm_start=True),
    ]
    warm = warm_start_savings(runs, PRICES, since=m(-60), now=m(120), cold_provision_s=300)
    assert warm.count == 3
    assert warm.saved_gpu_seconds == pytest.approx(2640 + 1920 + 960)
    assert warm.saved_cost == pytest.approx((2640 + 960) / 3600 * 2.99 + 1920 / 3600 * 3.79)
    # The report carries the same figures; with no cold start at all the setting is the baseline.
    assert usage_report(runs, PRICES, period="day", since=m(-60), now=m(120), cold_provision_s=300).warm == warm
    alone = warm_start_savings([runs[2]], PRICES, since=m(-60), now=m(120), cold_provision_s=300)
    assert (alone.count, alone.saved_gpu_seconds) == (1, pytest.approx((300 - 30) * 8))
    # A warm start slower than the cold ones saved nothing (never a negative saving).
    slow = warm_start_savings([runs[0], run(8, "H100:8", 1, 11, True)], PRICES, since=m(-60), now=m(120), cold_provision_s=300)
    assert (slow.count, slow.saved_gpu_seconds) == (1, 0)


# --- the endpoints -----------------------------------------------------------------------------
def add_run(session: Session, team_id: int, user_id: int, name: str, hardware: str, steps, **columns) -> Run:  # noqa: ANN001
    status = steps[-1][1]
    run = make_run(team_id, user_id, name=name, group_key="g" * 64, track="10min_16mb", hardware=hardware, status=status, submitted_at=steps[0][0],
                   finished_at=steps[-1][0] if status in ("SUCCEEDED", "FAILED", "CANCELLED") else None, **columns)  # fmt: skip
    session.add(run)
    session.flush()
    previous = None
    for at, to in steps:
        session.add(RunEvent(run_id=run.id, at=at, from_status=previous, to_status=to, actor="test"))
        previous = to
    return run


@pytest.fixture
def billed(session: Session, world) -> datetime:  # noqa: ANN001
    """Team A's runs of records(), yesterday from 10:00 UTC; team B one run. Returns their T0."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    t0 = today - timedelta(days=1) + timedelta(hours=10)

    def at(steps):  # noqa: ANN001, ANN202
        return [(t0 + (e.at - T0), e.to_status) for e in steps]

    a, b = world.team_ids["team-a"], world.team_ids["team-b"]
    add_run(session, a, world.user_ids["alice"], "requeued", "H100:8", at(REQUEUED), train_seconds=600, eval_seconds=120, attempts=1)
    add_run(session, a, world.user_ids["aaron"], "cancelled", "H100:8", at(CANCELLED))
    add_run(session, a, world.user_ids["alice"], "queued", "H100:8", at(NEVER_STARTED))
    add_run(session, a, world.user_ids["alice"], "gone", "H100:8", at(CANCELLED_IN_QUEUE))
    add_run(session, b, world.user_ids["bob"], "other team", "H100:8", at(CANCELLED))
    accounts.update_team(session, accounts.get_team(session, "team-a"), budget_gpu_hours=10.0)
    session.commit()
    return t0


def test_usage_endpoint_figures(client, world, billed):  # noqa: ANN001
    r = client.get("/api/v1/teams/team-a/usage", params={"period": "day"}, headers=world.h("alice"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["team"] == "team-a" and body["period"] == "day" and body["currency"] == "USD"
    assert body["total"]["gpu_hours"] == pytest.approx((18720 + 6240) / 3600)
    assert body["total"]["cost"] == pytest.approx((18720 + 6240) / 3600 * 2.99)
    assert body["total"]["phases"]["requeued"]["gpu_hours"] == pytest.approx(4800 / 3600)
    assert body["total"]["phases"]["provisioning"]["gpu_hours"] == pytest.approx((4320 + 3840) / 3600)
    assert {u["user"]: u["gpu_hours"] for u in body["users"]} == pytest.approx({"aaron": 6240 / 3600, "alice": 5.2})
    runs = {r["name"]: r for r in body["runs"]}
    assert set(runs) == {"requeued", "cancelled"}
    assert runs["requeued"]["attempts"] == 2 and runs["requeued"]["cost"] == pytest.approx(15.548)
    assert runs["requeued"]["phases"]["training"]["gpu_hours"] == pytest.approx(600 * 8 / 3600)
    yesterday = (billed - timedelta(hours=10)).date().isoformat()
    days = {d["start"]: d["gpu_hours"] for d in body["days"]}
    assert days[yesterday] == pytest.approx(24960 / 3600) and sum(days.values()) == pytest.approx(24960 / 3600)
    assert len(body["periods"]) == 14
    assert body["budget"] == pytest.approx({"budget_gpu_hours": 10.0, "period_days": 30.0, "used_gpu_hours": 24960 / 3600,
                                            "remaining_gpu_hours": 10 - 24960 / 3600})
    # A week view over the same runs: same total; a window that starts after them: nothing.
    week = client.get("/api/v1/teams/team-a/usage", params={"period": "week"}, headers=world.h("alice")).json()
    assert week["total"]["gpu_hours"] == pytest.approx(24960 / 3600) and len(week["periods"]) in (4, 5)
    since = (billed + timedelta(hours=2)).isoformat()
    later = client.get("/api/v1/teams/team-a/usage", params={"period": "month", "since": since}, headers=world.h("aaron")).json()
    assert later["total"]["gpu_hours"] == 0 and later["runs"] == []
    assert later["budget"]["used_gpu_hours"] == pytest.approx(24960 / 3600)  # the budget period is its own window


def test_usage_endpoint_counts_warm_starts(client, world, billed, session):  # noqa: ANN001
    # The fixture's two runs that ran, marked cold: provisioning 240 s and 480 s, median 360 s.
    for run in session.query(Run).filter(Run.name.in_(["requeued", "cancelled"])):
        run.warm_start = False
    at = [(billed + timedelta(minutes=mins), to) for mins, to in [(0, "QUEUED"), (50, "PROVISIONING"), (51, "RUNNING"), (61, "SUCCEEDED")]]
    add_run(session, world.team_ids["team-a"], world.user_ids["alice"], "warm", "H100:8", at, warm_start=True)
    session.commit()
    body = client.get("/api/v1/teams/team-a/usage", params={"period": "day"}, headers=world.h("alice")).json()
    # One warm start, 60 s of provisioning: (360 - 60) x 8 = 2400 GPU-s saved.
    assert body["warm_starts"] == 1
    assert body["warm_start_saved_gpu_hours"] == pytest.approx(2400 / 3600)
    assert body["warm_start_saved_cost"] == pytest.approx(2400 / 3600 * 2.99)
    other = client.get("/api/v1/teams/team-b/usage", headers=world.h("bob")).json()
    assert (other["warm_starts"], other["warm_start_saved_gpu_hours"]) == (0, 0)


def test_usage_endpoint_authorization(client, world, billed):  # noqa: ANN001
    url = "/api/v1/teams/team-a/usage"
    assert client.get(url, headers=world.h("root")).status_code == 200  # global admin, in no team
    assert client.get(url, headers=world.h("aaron")).status_code == 200
    assert client.get(url, headers=world.h("bob")).status_code == 404  # another team's looks absent, as runs do
    assert client.get("/api/v1/teams/nope/usage", headers=world.h("root")).status_code == 404
    assert client.get(url, headers=world.h(None)).status_code == 401
    assert client.get(url, headers=world.h("carol")).status_code == 401  # revoked token
    b = client.get("/api/v1/teams/team-b/usage", headers=world.h("bob")).json()
    assert b["total"]["gpu_hours"] == pytest.approx(6240 / 3600) and b["budget"]["remaining_gpu_hours"] is None


@pytest.mark.parametrize("params", [{"period": "year"}, {"since": "not a date"}, {"since": "2999-01-01T00:00:00Z"}, {"since": "2000-01-01T00:00:00Z"}])
def test_usage_endpoint_bad_query(client, world, params):  # noqa: ANN001
    r = client.get("/api/v1/teams/team-a/usage", params=params, headers=world.h("alice"))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["query", next(iter(params))]


def test_patch_team(client, world, session):  # noqa: ANN001
    url = "/api/v1/teams/team-a"
    r = client.patch(url, json={"budget_gpu_hours": 120.5, "weight": 2}, headers=world.h("root"))
    assert r.status_code == 200, r.text
    assert r.json()["budget_gpu_hours"] == 120.5 and r.json()["weight"] == 2.0
    r = client.patch(url, json={"weight": 0.5}, headers=world.h("root"))  # budget left as it was
    assert (r.json()["budget_gpu_hours"], r.json()["weight"]) == (120.5, 0.5)
    r = client.patch(url, json={"budget_gpu_hours": None}, headers=world.h("root"))  # null: no budget
    assert (r.json()["budget_gpu_hours"], r.json()["weight"]) == (None, 0.5)
    session.expire_all()
    assert accounts.get_team(session, "team-a").weight == 0.5
    # Not global admins: a team admin of that very team, a member, another team.
    for who in ("aaron", "alice", "bob"):
        assert client.patch(url, json={"weight": 3}, headers=world.h(who)).status_code == 403
    assert client.patch(url, json={"weight": 3}, headers=world.h(None)).status_code == 401
    assert client.patch("/api/v1/teams/nope", json={"weight": 3}, headers=world.h("root")).status_code == 404
    session.expire_all()
    assert accounts.get_team(session, "team-a").weight == 0.5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"weight": 0}', "weight"),
        ('{"weight": -1}', "weight"),
        ('{"weight": 1001}', "weight"),
        ('{"weight": NaN}', "weight"),
        ('{"weight": null}', "weight"),
        ('{"budget_gpu_hours": -0.5}', "budget_gpu_hours"),
        ('{"budget_gpu_hours": Infinity}', "budget_gpu_hours"),
        ('{"budget_gpu_hours": 1e999}', "budget_gpu_hours"),
        ('{"budget_gpu_hours": "lots"}', "budget_gpu_hours"),
        ('{"name": "renamed"}', "name"),
    ],
)
def test_patch_team_validation(client, world, body, field):  # noqa: ANN001
    r = client.patch("/api/v1/teams/team-a", content=body, headers={**world.h("root"), "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(d["loc"][-1] == field for d in r.json()["detail"]), r.json()


def test_update_team_domain_checks(session, world):  # noqa: ANN001
    from service.core.errors import InvalidInput

    team = accounts.get_team(session, "team-a")
    for changes in ({"weight": math.nan}, {"weight": 0.0}, {"budget_gpu_hours": math.inf}, {"budget_gpu_hours": -1.0}, {"colour": 1.0}):
        with pytest.raises(InvalidInput) as info:
            accounts.update_team(session, team, **changes)
        assert info.value.issues[0].loc == (next(iter(changes)),)
    assert accounts.update_team(session, team, budget_gpu_hours=0.0).budget_gpu_hours == 0.0


def test_every_teams_usage_read_at_once_equals_each_teams_alone_and_skips_runs_never_started(session: Session, world, billed) -> None:  # noqa: ANN001
    """The usage page reads all its teams' billed runs in one go (a global admin sees every team): the figures are
    each team's own; a queued run never attempted has billed nothing and is not read at all (a requeued one is)."""
    from service.billing import usage
    from service.billing.accounting import load_team_runs

    teams = [accounts.get_team(session, "team-a"), accounts.get_team(session, "team-b")]
    together = usage.teams_usage(session, teams, PRICES)
    assert together == [usage.team_usage(session, team, PRICES) for team in teams]
    assert together[0].total == pytest.approx((18720 + 6240) / 3600) and together[1].total > 0
    assert together[0].team == "team-a" and together[0].budget_gpu_hours == 10.0
    read = {r.name for r in load_team_runs(session, world.team_ids["team-a"], billed - timedelta(days=1))}
    assert "queued" not in read and {"requeued", "cancelled"} <= read
    assert usage.teams_usage(session, [], PRICES) == []
