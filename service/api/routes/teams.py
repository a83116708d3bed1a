"""/teams: global admins create teams; team admins (and global admins) add members."""

from __future__ import annotations

from fastapi import APIRouter

from service import accounts
from service.api.deps import AdminUser, CurrentUser, SessionDep
from service.errors import Forbidden, NotFound
from service.schemas import MemberAdd, TeamCreate, TeamOut

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
    team = accounts.get_team(session, name)
    if not user.can_see_team(team.id):
        raise NotFound("team", name)
    if not user.can_manage_team(team.id):
        raise Forbidden(f"only admins of team {name!r} may add members")
    accounts.add_member(session, team, body.user, body.role)
    session.commit()
    return TeamOut.of(team, accounts.team_members(session, team.id))
