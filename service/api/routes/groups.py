"""/groups and /leaderboard: a team's configs over seeds, significance, rule checks, publication."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.core.errors import InvalidInput, Issue
from service.http.deps import CurrentUser, SessionDep
from service.results import queries
from service.results.schemas import ComparisonOut, GroupDetail, GroupOut, Leaderboard, LeaderboardEntry

router = APIRouter(tags=["results"])

# a group key (64 hex), "leader", or "record:<folder>" (folder names run to ~100 characters)
Key = Annotated[str, Query(max_length=300)]
Policy = Annotated[str, Query(pattern="^(readme|maintainers|systems_only)$",
                              description="significance policy: readme (0.005 nats at p < 0.01, default), maintainers (p < 0.25, no margin) or systems_only (waived)")]


@router.get("/groups", response_model=list[GroupOut])
def list_groups(
    user: CurrentUser,
    session: SessionDep,
    track: Annotated[str | None, Query(max_length=32)] = None,
    hardware: Annotated[str | None, Query(max_length=32)] = None,
    team: Annotated[str | None, Query(max_length=100)] = None,
    published: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[GroupOut]:
    """Groups the caller may see (their teams' and published ones), newest first."""
    views = queries.list_groups(session, user, track=track, hardware=hardware, team=team, published=published, limit=limit)
    return [GroupOut.of(v) for v in views]


@router.get("/groups/{key}", response_model=GroupDetail)
def get_group(key: str, user: CurrentUser, session: SessionDep, baseline: Key | None = None, policy: Policy = "readme") -> GroupDetail:
    """Per-seed table, checks, and the Welch test against ``baseline`` (default: the track's public
    record where imported, else the team's leader; ``leader`` or ``record:<folder>`` pick one)."""
    return GroupDetail.of_report(queries.group_report(session, user, key, baseline, policy))


@router.get("/groups/{key}/compare/{baseline}", response_model=ComparisonOut)
def compare_groups(key: str, baseline: str, user: CurrentUser, session: SessionDep, policy: Policy = "readme") -> ComparisonOut:
    """Does group ``key`` beat ``baseline`` (a group, ``leader`` or ``record:<folder>``) under ``policy``?
    Difference in nats per byte, CI, one-sided p; flagged when track, hardware or validation set differ."""
    report = queries.group_report(session, user, key, baseline, policy)
    assert report.comparison is not None and report.baseline is not None  # a baseline was given
    return ComparisonOut.of(report.comparison, report.view, report.baseline)


@router.post("/groups/{key}/publish", response_model=GroupOut)
def publish(key: str, user: CurrentUser, session: SessionDep) -> GroupOut:
    """Make the group visible to every team on the leaderboard."""
    group = queries.set_published(session, user, key, True)
    return GroupOut.of(queries.group_view(session, user, group.key))


@router.post("/groups/{key}/unpublish", response_model=GroupOut)
def unpublish(key: str, user: CurrentUser, session: SessionDep) -> GroupOut:
    group = queries.set_published(session, user, key, False)
    return GroupOut.of(queries.group_view(session, user, group.key))


@router.get("/leaderboard", response_model=Leaderboard)
def leaderboard(
    user: CurrentUser,
    session: SessionDep,
    track: Annotated[str, Query(max_length=32)] = "10min_16mb",
    hardware: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Leaderboard:
    """Visible groups of a track ranked by mean val_bpb, with n, std, bytes, checks and eligibility."""
    if not track.strip():
        raise InvalidInput([Issue(("query", "track"), "must not be empty", track)])
    rows = queries.leaderboard(session, user, track=track, hardware=hardware, limit=limit)
    return Leaderboard(track=track, hardware=hardware, entries=[LeaderboardEntry.of(r) for r in rows])
