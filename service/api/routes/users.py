"""/users: global admins create users; everyone can see themselves."""

from __future__ import annotations

from fastapi import APIRouter

from service.http.deps import AdminUser, CurrentUser, SessionDep
from service.teams import accounts
from service.teams.schemas import UserCreate, UserOut

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", status_code=201, response_model=UserOut)
def create_user(body: UserCreate, _admin: AdminUser, session: SessionDep) -> UserOut:
    user = accounts.create_user(session, body.name, email=body.email, is_admin=body.is_admin)
    session.commit()
    return UserOut.of(user)


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser, session: SessionDep) -> UserOut:
    row = accounts.get_user(session, user.name)
    teams = sorted((user.team_names[tid], role) for tid, role in user.roles.items())
    return UserOut.of(row, teams, accounts.invitations(session, user.user_id))
