"""Results, the database side: groups, comparisons, the leaderboard, publication.

Visibility: a group is visible to its team's members, to global admins, and,
once published, to every caller. Other teams' unpublished groups do not exist
for them (NotFound), as with runs. A published group shows its figures and
per-seed table; its runs' logs and artifacts stay with the team.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, joinedload

from service.core.errors import Conflict, Forbidden, InvalidInput, Issue, NotFound
from service.core.models import SCRIPT_KIND, Run, RunGroup, Team, utcnow
from service.core.status import RunStatus
from service.results import records_store
from service.results.groups import (
    Eligibility,
    GroupStats,
    SeedRow,
    aggregate,
    eligibility,
)
from service.results.rules import Check, RunFacts, check_run, declared, overall
from service.results.statistics import DEFAULT_POLICY, Comparison, compare_policy
from service.results.views import GroupView
from service.teams.tokens import Principal

MIN_PREFIX = 6


# --- per run: rule checks, written with the result ------------------------------------
def judge_run(run: Run) -> None:
    """Compute the run's rule checks from its result and store them on it (the caller commits)."""
    checks = checks_of(run)
    run.checks = [c.to_dict() for c in checks]
    run.checks_verdict = overall(checks).value


# What caddie cannot verify for a team's own script (it does not report them): listed as
# declared by the team, never as a pass; the other rules stay real checks.
# no_val_in_train and no_network_in_eval are real checks where the script was watched (its
# audit, service.runs.touches); declared only where it was not.
SCRIPT_DECLARED = ("full_val", "ttt_protocol", "no_val_in_train", "no_network_in_eval")


def checks_of(run: Run) -> list[Check]:
    """The rule checks of a run from its stored figures and result.json."""
    facts = RunFacts.from_result(track=run.track, hardware=run.hardware, allow_noncompliant=run.allow_noncompliant,
                                 result=run.result, artifact_bytes=run.artifact_bytes,
                                 train_seconds=run.train_seconds, eval_seconds=run.eval_seconds, node=run.node_hardware)
    checks = check_run(facts)
    if run.kind == SCRIPT_KIND and not run.allow_noncompliant:
        checks = [declared(c, "the team") if c.rule in SCRIPT_DECLARED else c for c in checks]
    return checks


def seed_row(run: Run) -> SeedRow:
    if run.checks is not None:
        checks = [Check.from_dict(c) for c in run.checks]
    else:  # finished before checks were stored, or not finished: judged now, not stored by a read
        checks = checks_of(run) if run.status == RunStatus.SUCCEEDED else []
    return SeedRow(
        run_id=run.id, seed=run.seed, status=run.status, status_reason=run.status_reason or "",
        val_bpb=run.val_bpb, val_loss=run.val_loss, pre_ttt_bpb=run.pre_ttt_bpb,
        artifact_bytes=run.artifact_bytes, code_bytes=run.code_bytes, model_bytes=run.model_bytes,
        train_seconds=run.train_seconds, eval_seconds=run.eval_seconds, steps=run.steps, finished_at=run.finished_at,
        checks=tuple(checks),
    )


# --- finding groups -------------------------------------------------------------------
def _visible(principal: Principal):  # noqa: ANN202 - a SQL expression
    if principal.is_admin:
        return None
    return or_(RunGroup.team_id.in_(sorted(principal.roles)), RunGroup.published_at.is_not(None))


def find_group(session: Session, principal: Principal, key: str) -> RunGroup:
    """A visible group by its full key or a unique prefix of at least 6 characters."""
    key = key.strip().lower()
    query = select(RunGroup).options(joinedload(RunGroup.team))
    cond = _visible(principal)
    if cond is not None:
        query = query.where(cond)
    if len(key) == 64:
        group = session.scalar(query.where(RunGroup.key == key))
    else:
        if len(key) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in key):
            raise InvalidInput([Issue(("group",), f"give a group key or a prefix of at least {MIN_PREFIX} hex characters", key)])
        found = list(session.scalars(query.where(RunGroup.key.like(f"{key}%")).limit(2)))
        if len(found) > 1:
            raise InvalidInput([Issue(("group",), "this prefix matches several groups; give more characters", key)])
        group = found[0] if found else None
    if group is None:
        raise NotFound("group", key)
    return group


def _runs_of(session: Session, keys: Sequence[str]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {k: [] for k in keys}
    if keys:
        for run in session.scalars(select(Run).where(Run.group_key.in_(list(keys))).order_by(Run.id)):
            out[run.group_key].append(run)
    return out


def _views(session: Session, groups: Sequence[RunGroup]) -> list[GroupView]:
    runs = _runs_of(session, [g.key for g in groups])
    return [GroupView(g, aggregate([seed_row(r) for r in runs[g.key]]), tuple(runs[g.key])) for g in groups]


# --- group figures for lists and the leaderboard, kept per process --------------------------
# A published group of 10,000 runs made every team's /groups and leaderboard load and judge its
# 10,000 runs on each request (9-17 ms -> about 0.5 s; issue 17 item 5). Its statistics change only
# when one of its runs is added, removed or has a figure, check or status written, and every such
# write moves run_groups.stats_version in the same transaction (triggers on runs, migration 0015),
# whoever writes it (the state machine, the executor, a Core UPDATE, SQL by hand). So they are kept
# in memory under the group's (created_at, stats_version), read by primary key: O(1) per group
# whatever its size. created_at tells a group recreated under the same key (another database, a
# team removed and made again) from the one kept.
_STATS_KEPT = 2048  # groups kept per process (least recently used go first)
_stats: OrderedDict[str, tuple[tuple[object, ...], GroupStats, int]] = OrderedDict()
_stats_lock = threading.Lock()


def _versions(session: Session, keys: Sequence[str]) -> dict[str, tuple[object, ...]]:
    # Read here, not from the RunGroup objects: the session may hold them from before this
    # transaction's own writes moved the version. Read before the runs (below), so figures kept
    # under a version are never older than it (at worst newer, and recomputed on the next bump).
    query = select(RunGroup.key, RunGroup.created_at, RunGroup.stats_version).where(RunGroup.key.in_(list(keys)))
    return {key: (created, version) for key, created, version in session.execute(query)}


def _summaries(session: Session, groups: Sequence[RunGroup]) -> list[GroupView]:
    """Views with the figures only (``runs`` empty, ``total`` set): the statistics come from the
    process's cache while the group's version is unchanged, else from its runs (then kept)."""
    keys = [g.key for g in groups]
    versions = _versions(session, keys) if keys else {}
    found: dict[str, tuple[GroupStats, int]] = {}
    with _stats_lock:
        for key in keys:
            kept = _stats.get(key)
            if kept is not None and kept[0] == versions.get(key, ()):
                _stats.move_to_end(key)
                found[key] = (kept[1], kept[2])
    missing = [k for k in keys if k not in found]
    if missing:
        runs = _runs_of(session, missing)
        for key in missing:
            stats = aggregate([seed_row(r) for r in runs[key]])
            found[key] = (stats, len(runs[key]))
        with _stats_lock:
            for key in missing:
                _stats[key] = (versions.get(key, ()), *found[key])
                _stats.move_to_end(key)
            while len(_stats) > _STATS_KEPT:
                _stats.popitem(last=False)
    return [GroupView(g, found[g.key][0], (), total=found[g.key][1]) for g in groups]


def list_groups(session: Session, principal: Principal, *, track: str | None = None, hardware: str | None = None,
                team: str | None = None, published: bool | None = None, limit: int = 100) -> list[GroupView]:
    """Visible groups, newest first."""
    query = select(RunGroup).options(joinedload(RunGroup.team))
    cond = _visible(principal)
    if cond is not None:
        query = query.where(cond)
    if track:
        query = query.where(RunGroup.track == track)
    if hardware:
        query = query.where(RunGroup.hardware == hardware)
    if team:
        query = query.where(RunGroup.team_id == select(Team.id).where(Team.name == team).scalar_subquery())
    if published is not None:
        query = query.where(RunGroup.published_at.is_not(None) if published else RunGroup.published_at.is_(None))
    groups = list(session.scalars(query.order_by(RunGroup.created_at.desc(), RunGroup.key).limit(limit)))
    return _summaries(session, groups)


def group_view(session: Session, principal: Principal, key: str) -> GroupView:
    """A visible group, or a public record by ``record:<folder>`` (every user sees those)."""
    if records_store.is_record_ref(key):
        return records_store.record_view(session, key.strip())
    return _views(session, [find_group(session, principal, key)])[0]


# --- baselines and significance ------------------------------------------------------------
def default_baseline(session: Session, principal: Principal, view: GroupView) -> GroupView | None:
    """The team's current leader on the group's track and hardware (see ``team_leader``).
    Only groups the caller may see: another team reading a published group never
    learns of its team's unpublished ones."""
    g = view.group
    query = (select(RunGroup).options(joinedload(RunGroup.team))
             .where(RunGroup.team_id == g.team_id, RunGroup.track == g.track, RunGroup.hardware == g.hardware, RunGroup.key != g.key))
    cond = _visible(principal)
    return team_leader(view, _summaries(session, list(session.scalars(query if cond is None else query.where(cond)))))  # figures only


def team_leader(view: GroupView, candidates: Sequence[GroupView]) -> GroupView | None:
    """Among ``candidates``, the lowest mean val_bpb of the group's team on its track and
    hardware with a counted run, the group itself excluded (so the runner-up when it leads)."""
    g = view.group
    others = [v for v in candidates if v.group.team_id == g.team_id and v.group.track == g.track and v.group.hardware == g.hardware
              and v.group.key != g.key and v.stats.n > 0]
    return min(others, key=lambda v: (v.stats.val_bpb.mean, v.group.key), default=None)


def comparable_flags(candidate: RunGroup, baseline: RunGroup) -> list[str]:
    """Why two groups cannot be compared: another track, other hardware, another validation set."""
    flags = []
    if candidate.track != baseline.track:
        flags.append(f"track {candidate.track} against {baseline.track}")
    if candidate.hardware != baseline.hardware:
        flags.append(f"hardware {candidate.hardware} against {baseline.hardware}")
    limits = [(g.config or {}).get("VAL_TOKENS_LIMIT") or None for g in (candidate, baseline)]
    if limits[0] != limits[1]:
        shown = ["the full split" if x is None else f"{x:,} tokens" for x in limits]
        flags.append(f"validation set {shown[0]} against {shown[1]}")
    return flags


def comparison(candidate: GroupView, baseline: GroupView | None, policy: str = DEFAULT_POLICY) -> Comparison | None:
    """One-sided Welch test in nats per byte under a named policy (the README's by default),
    flagged when the groups differ in track, hardware or validation set."""
    if baseline is None:
        return None
    return compare_policy([(r.val_bpb, r.val_loss) for r in candidate.stats.counted if r.val_bpb is not None and r.val_loss is not None],
                          [(r.val_bpb, r.val_loss) for r in baseline.stats.counted if r.val_bpb is not None and r.val_loss is not None], policy,
                          comparable_flags(candidate.group, baseline.group))


@dataclass(frozen=True)
class GroupReport:
    view: GroupView
    baseline: GroupView | None
    comparison: Comparison | None
    eligibility: Eligibility


def group_report(session: Session, principal: Principal, key: str, baseline_key: str | None = None,
                 policy: str = DEFAULT_POLICY) -> GroupReport:
    """A group with its baseline (see ``report_for``), the test under ``policy`` and eligibility."""
    view = group_view(session, principal, key)
    return report_for(session, principal, view, baseline_key, policy)


LEADER = "leader"  # baseline_key naming the team's own leader instead of the public record


def report_for(session: Session, principal: Principal, view: GroupView, baseline_key: str | None = None,
               policy: str = DEFAULT_POLICY) -> GroupReport:
    """The group against ``baseline_key``: a group, ``record:<folder>`` (a public record) or
    ``leader`` (the team's own leader); by default the current public record of its track where
    records are imported, else the team's leader."""
    if baseline_key == LEADER:
        base = default_baseline(session, principal, view)
    elif records_store.is_record_ref(baseline_key):
        base = records_store.record_view(session, str(baseline_key))
    elif baseline_key:
        base = group_view(session, principal, baseline_key)
        if base.group.key == view.group.key:
            raise InvalidInput([Issue(("baseline",), "a group cannot be its own baseline", baseline_key)])
    elif view.group.kind == records_store.RECORD_KIND:
        base = None  # a public record's own page: no default baseline
    else:
        base = records_store.frontier(session, view.group.track) or default_baseline(session, principal, view)
    return _report(view, base, policy)


def _report(view: GroupView, base: GroupView | None, policy: str = DEFAULT_POLICY) -> GroupReport:
    comp = comparison(view, base, policy)
    return GroupReport(view, base, comp, eligibility(view.stats, comp, view.group.allow_noncompliant))


# --- leaderboard ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    report: GroupReport


def leaderboard(session: Session, principal: Principal, *, track: str, hardware: str | None = None,
                limit: int = 100) -> list[LeaderboardRow]:
    """Visible groups of one track (and hardware), with a counted run, ranked by mean val_bpb,
    beside the track's imported public records (kind ``record``, team "public record")."""
    views = [v for v in list_groups(session, principal, track=track, hardware=hardware, limit=10_000) if v.stats.n > 0]
    records = [v for v in records_store.record_views(session, track) if hardware in (None, v.group.hardware)]
    best = records_store.frontier(session, track)
    # Each row's default baseline comes from the views at hand (no query per row): the public
    # record of the track where one is imported, else the team's leader; a record has none.
    rows = [(v, None if v.group.kind == records_store.RECORD_KIND else (best or team_leader(v, views))) for v in views + records]
    rows.sort(key=lambda r: (r[0].stats.val_bpb.mean, -r[0].stats.n, r[0].group.key))
    return [LeaderboardRow(i, _report(v, base)) for i, (v, base) in enumerate(rows[:limit], start=1)]


# --- publication ------------------------------------------------------------------------------
def _own_group(session: Session, principal: Principal, key: str) -> RunGroup:
    group = find_group(session, principal, key)
    if not principal.can_see_team(group.team_id):
        raise Forbidden("only the group's team may publish or export it")
    return group


def set_published(session: Session, principal: Principal, key: str, published: bool) -> RunGroup:
    """Publish (every team sees it on the leaderboard) or unpublish; members of its team or admins."""
    group = _own_group(session, principal, key)
    if published and group.published_at is None:
        group.published_at, group.published_by = utcnow(), principal.user_id
    elif not published and group.published_at is not None:
        group.published_at, group.published_by = None, None
    session.commit()
    return group


def exportable_group(session: Session, principal: Principal, key: str) -> RunGroup:
    """The group, if the caller's team owns it (published groups are not exportable by others)."""
    group = _own_group(session, principal, key)
    if session.scalar(select(Run.id).where(Run.group_key == group.key, Run.status == RunStatus.SUCCEEDED.value).limit(1)) is None:
        raise Conflict("the group has no succeeded run to export")
    return group
