"""/teams: global admins create teams and set their budget and weight; team admins
(and global admins) add members; members see what their team's compute cost."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from service.billing import accounting
from service.billing.schemas import TeamUpdate, TeamUsageOut
from service.core.errors import Forbidden, InvalidInput, Issue, NotFound
from service.core.models import utcnow
from service.http.deps import AdminUser, CurrentUser, SessionDep, SettingsDep
from service.teams import accounts
from service.teams.schemas import MemberAdd, TeamCreate, TeamOut
from service.webhooks import history as webhook_history
from service.webhooks.schemas import DeliveryPage

# The longest window a usage report covers (one row per day of it).
MAX_USAGE_DAYS = 400

router = APIRouter(prefix="/teams", tags=["teams"])


@router.post("", status_code=201, response_model=TeamOut)
def create_team(body: TeamCreate, _admin: AdminUser, session: SessionDep) -> TeamOut:
    team = accounts.create_team(session, body.name, budget_gpu_hours=body.budget_gpu_hours, weight=body.weight)
    session.commit()
    return TeamOut.of(team)


@router.get("", response_model=list[TeamOut])
def list_teams(user: CurrentUser, session: SessionDep) -> list[TeamOut]:
    """Global admins see every team; others see their own."""
    teams = accounts.list_teams(session, None if user.is_admin else list(user.roles))
    return [TeamOut.of(t, accounts.team_members(session, t.id)) for t in teams]


@router.post("/{name}/members", status_code=201, response_model=TeamOut)
def add_member(name: str, body: MemberAdd, user: CurrentUser, session: SessionDep) -> TeamOut:
    """Global admins add the user at once. A team admin invites: the user joins once they
    accept (POST /teams/{name}/accept); the answer is the same whether the name exists or not."""
    team = accounts.get_team(session, name)
    if not user.can_see_team(team.id):
        raise NotFound("team", name)
    if not user.can_manage_team(team.id):
        raise Forbidden(f"only admins of team {name!r} may add members")
    if user.is_admin:
        accounts.add_member(session, team, body.user, body.role)
    else:
        accounts.invite(session, team, body.user, body.role)
    session.commit()
    return TeamOut.of(team, accounts.team_members(session, team.id))


@router.post("/{name}/accept", response_model=TeamOut)
def accept_invitation(name: str, user: CurrentUser, session: SessionDep) -> TeamOut:
    """Accept your invitation to a team."""
    membership = accounts.accept(session, user.user_id, name)
    session.commit()
    return TeamOut.of(membership.team, accounts.team_members(session, membership.team_id))


@router.post("/{name}/decline", status_code=204)
def decline_invitation(name: str, user: CurrentUser, session: SessionDep) -> Response:
    """Decline your invitation to a team: it is gone, and you join nothing."""
    accounts.decline(session, user.user_id, name)
    session.commit()
    return Response(status_code=204)


@router.delete("/{name}/members/{member}", status_code=204)
def remove_member(name: str, member: Annotated[str, Path(max_length=100)], user: CurrentUser, session: SessionDep) -> Response:
    """Remove a member (team admins and global admins; any member may remove themself: leave).
    The team's last admin stays (409). A name that is not a member answers 404, whether or not
    the user exists (a pending invitation of that name is withdrawn)."""
    team = accounts.get_team(session, name)
    if not user.can_see_team(team.id):
        raise NotFound("team", name)
    if not user.can_manage_team(team.id) and member != user.name:
        raise Forbidden(f"only admins of team {name!r} may remove other members")
    removed = accounts.remove_member(session, team, member)
    session.commit()
    if not removed:
        raise NotFound(f"member of team {name!r}", member)
    return Response(status_code=204)


@router.patch("/{name}", response_model=TeamOut)
def update_team(name: str, body: TeamUpdate, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> TeamOut:
    """Change a team's GPU-hour budget and/or fair-share weight (global admins) and its webhook URL (team admins)."""
    changes = body.model_dump(include=body.model_fields_set)
    webhook_given, webhook_url = "webhook_url" in changes, changes.pop("webhook_url", None)
    if changes and not user.is_admin:
        raise Forbidden("only global admins change a team's budget and weight")
    team = accounts.get_team(session, name)
    if webhook_given:
        if not user.can_see_team(team.id):
            raise NotFound("team", name)
        if not user.can_manage_team(team.id):
            raise Forbidden(f"only admins of team {name!r} set its webhook")
        accounts.set_webhook_url(session, team, webhook_url, allow_private=settings.webhook_allow_private)
    if changes:
        accounts.update_team(session, team, **changes)
    session.commit()
    return TeamOut.of(team, accounts.team_members(session, team.id))


@router.get("/{name}/usage", response_model=TeamUsageOut)
def team_usage(
    name: str,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    period: Literal["day", "week", "month"] = "week",
    since: Annotated[datetime | None, Query(description="start of the report (UTC when no zone is given); default: a few periods back")] = None,
) -> TeamUsageOut:
    """Billed GPU-hours and cost of the team's runs per period, per user, per phase and per run, and its budget."""
    team = accounts.get_team(session, name)
    if not user.can_see_team(team.id):
        raise NotFound("team", name)
    now = utcnow()
    if since is not None:
        since = since.replace(tzinfo=timezone.utc) if since.tzinfo is None else since.astimezone(timezone.utc)
        if not now - timedelta(days=MAX_USAGE_DAYS) <= since < now:
            raise InvalidInput([Issue(("query", "since"), f"must be in the past, at most {MAX_USAGE_DAYS} days ago", since.isoformat())])
    report, budget = accounting.team_report(
        session, team.id, team.budget_gpu_hours, settings.gpu_price_table,
        period=period, since=since, now=now, budget_period_days=settings.budget_period_days, cold_provision_s=settings.cold_provision_s,
    )
    return TeamUsageOut.of(team.name, team.weight, report, budget)


@router.get("/{name}/deliveries", response_model=DeliveryPage)
def team_deliveries(
    name: str,
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=100, description="next_cursor of the previous page")] = None,
) -> DeliveryPage:
    """The team's webhook notifications, newest first, and what became of each (its members);
    ``next_cursor`` (null on the last page) gives the next page."""
    team = accounts.get_team(session, name)
    if not user.can_see_team(team.id):
        raise NotFound("team", name)
    rows, next_cursor = webhook_history.deliveries(session, team.id, limit=limit, cursor=cursor)
    return DeliveryPage(items=rows, next_cursor=next_cursor)
