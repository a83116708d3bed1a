"""Teams, users, memberships and tokens, with no HTTP: the API routes and the
``caddie admin ...`` bootstrap commands both call these.

Functions flush but do not commit; the caller owns the transaction.
"""

from __future__ import annotations

import math
import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.bodies import HANDLE_PATTERN, HANDLE_RULE, TOKEN_NAME_MAX_CHARS
from service.core.errors import AlreadyExists, Conflict, InvalidInput, Issue, NotFound
from service.core.models import ApiToken, Membership, Team, User, utcnow
from service.core.text import text_problem
from service.teams.tokens import ACTIVE_ROLES, INVITED, issue_token
from service.teams.webhook_url import BadWebhookUrl, check_url, masked

ROLES = ("member", "admin")


def get_team(session: Session, name: str) -> Team:
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise NotFound("team", name)
    return team


def get_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound("user", name)
    return user


def check_handle(kind: str, name: str) -> None:
    """Team and user names: the rule the API's schemas check (HANDLE_PATTERN), for every caller."""
    if not re.fullmatch(HANDLE_PATTERN, name):
        raise InvalidInput([Issue(("name",), f"{kind} name must be {HANDLE_RULE}", name)])


def check_token_name(name: str) -> None:
    problem = text_problem(name)
    if not 1 <= len(name) <= TOKEN_NAME_MAX_CHARS:
        problem = f"must be 1 to {TOKEN_NAME_MAX_CHARS} characters"
    if problem:
        raise InvalidInput([Issue(("name",), f"token name {problem}", name)])


def _insert(session: Session, row: Team | User, kind: str, key: str) -> None:
    # Callers check first; this catches the race of two creations at once
    # (the unique constraint decides; the losing transaction is rolled back).
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise AlreadyExists(kind, key) from None


def create_team(session: Session, name: str, *, budget_gpu_hours: float | None = None, weight: float = 1.0) -> Team:
    check_handle("team", name)
    issues = []
    if budget_gpu_hours is not None and not (math.isfinite(budget_gpu_hours) and budget_gpu_hours >= 0):
        issues.append(Issue(("budget_gpu_hours",), "must be a finite number >= 0", budget_gpu_hours))
    if not (math.isfinite(weight) and 0 < weight <= 1000):
        issues.append(Issue(("weight",), "must be > 0 and <= 1000", weight))
    if issues:
        raise InvalidInput(issues)
    if session.scalar(select(Team.id).where(Team.name == name)) is not None:
        raise AlreadyExists("team", name)
    team = Team(name=name, budget_gpu_hours=budget_gpu_hours, weight=weight)
    _insert(session, team, "team", name)
    return team


def update_team(session: Session, team: Team, **changes: float | None) -> Team:
    """Set a team's ``budget_gpu_hours`` (None: no budget) and/or ``weight``; only the keys given change."""
    issues = []
    unknown = sorted(set(changes) - {"budget_gpu_hours", "weight"})
    for key in unknown:
        issues.append(Issue((key,), "not a team setting", changes[key]))
    budget = changes.get("budget_gpu_hours")
    if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
        issues.append(Issue(("budget_gpu_hours",), "must be a finite number >= 0", budget))
    if "weight" in changes:
        weight = changes["weight"]
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0 < weight <= 1000):
            issues.append(Issue(("weight",), "must be > 0 and <= 1000", weight))
    if issues:
        raise InvalidInput(issues)
    if "budget_gpu_hours" in changes:
        team.budget_gpu_hours = None if budget is None else float(budget)
    if "weight" in changes:
        team.weight = float(changes["weight"])  # type: ignore[arg-type]
    session.flush()
    return team


def set_webhook_url(session: Session, team: Team, url: str | None, *, allow_private: bool) -> Team:
    """Set (or with None or "", remove) where the team's notifications go (service.webhooks)."""
    if url is not None and url.strip():
        try:
            url = check_url(url, allow_private=allow_private)
        except BadWebhookUrl as exc:
            raise InvalidInput([Issue(("webhook_url",), str(exc), masked(url))]) from None  # the path may be a secret: not echoed
    team.webhook_url = url or None
    session.flush()
    return team


def create_user(session: Session, name: str, *, email: str | None = None, is_admin: bool = False) -> User:
    check_handle("user", name)
    if email is not None:
        problem = text_problem(email) or ("must be at most 320 characters" if len(email) > 320 else None)
        if problem:
            raise InvalidInput([Issue(("email",), f"email {problem}", email)])
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise AlreadyExists("user", name)
    user = User(name=name, email=email, is_admin=is_admin)
    _insert(session, user, "user", name)
    return user


def add_member(session: Session, team: Team | str, user: User | str, role: str = "member") -> Membership:
    """Put ``user`` in ``team`` with ``role``; if already a member, set the role."""
    if role not in ROLES:
        raise InvalidInput([Issue(("role",), f"must be one of {', '.join(ROLES)}", role)])
    team = get_team(session, team) if isinstance(team, str) else team
    user = get_user(session, user) if isinstance(user, str) else user
    membership = session.scalar(select(Membership).where(Membership.team_id == team.id, Membership.user_id == user.id))
    if membership is None:
        membership = Membership(team_id=team.id, user_id=user.id, role=role)
        session.add(membership)
        session.flush()
    else:
        set_role(session, membership, role)
    return membership


def _admins(session: Session, team_id: int) -> int:
    return len(session.scalars(select(Membership.id).where(Membership.team_id == team_id, Membership.role == "admin")).all())


def _lock_team(session: Session, team_id: int) -> None:
    # Two admins stepping down or removing each other at once must not both see "another admin
    # is left": whoever changes a team's admins holds the team's row until commit.
    session.execute(select(Team.id).where(Team.id == team_id).with_for_update())


def set_role(session: Session, membership: Membership, role: str) -> None:
    """Change a member's role; a team never loses its last admin (it could not be managed again)."""
    _lock_team(session, membership.team_id)
    if membership.role == "admin" and role != "admin" and _admins(session, membership.team_id) <= 1:
        raise Conflict("the last admin of a team cannot step down; make another member admin first")
    membership.role = role
    session.flush()


def invite(session: Session, team: Team, user_name: str, role: str = "member") -> None:
    """A team admin's invitation: the user becomes a member only once they accept it.
    A member already in the team gets the role at once. An unknown name does nothing and
    says nothing, so the answer does not tell which user names exist."""
    if role not in ROLES:
        raise InvalidInput([Issue(("role",), f"must be one of {', '.join(ROLES)}", role)])
    user = session.scalar(select(User).where(User.name == user_name))
    if user is None:
        return
    membership = session.scalar(select(Membership).where(Membership.team_id == team.id, Membership.user_id == user.id))
    if membership is None:
        session.add(Membership(team_id=team.id, user_id=user.id, role=INVITED + role))
        session.flush()
    elif membership.role.startswith(INVITED):
        membership.role = INVITED + role
        session.flush()
    else:
        set_role(session, membership, role)


def accept(session: Session, user_id: int, team_name: str) -> Membership:
    """The invited user accepts: the invitation becomes a membership with the role offered."""
    membership = session.scalar(
        select(Membership).join(Team, Team.id == Membership.team_id)
        .where(Team.name == team_name, Membership.user_id == user_id, Membership.role.startswith(INVITED))
    )
    if membership is None:
        raise NotFound("invitation to team", team_name)
    membership.role = membership.role.removeprefix(INVITED)
    session.flush()
    return membership


def decline(session: Session, user_id: int, team_name: str) -> None:
    """The invited user declines: the invitation is gone (the team may invite them again)."""
    membership = session.scalar(
        select(Membership).join(Team, Team.id == Membership.team_id)
        .where(Team.name == team_name, Membership.user_id == user_id, Membership.role.startswith(INVITED))
    )
    if membership is None:
        raise NotFound("invitation to team", team_name)
    session.delete(membership)
    session.flush()


def remove_member(session: Session, team: Team, user_name: str) -> bool:
    """Take ``user_name`` out of ``team`` (a team admin, a global admin, or the member leaving):
    True. The team keeps at least one admin (Conflict). False where the name is no member: a
    pending invitation of that name is then withdrawn (the caller commits it), and the caller
    answers as for a name that does not exist, so the answer does not tell which users exist.
    The member's runs stay the team's."""
    _lock_team(session, team.id)
    membership = session.scalar(
        select(Membership).join(User, User.id == Membership.user_id).where(Membership.team_id == team.id, User.name == user_name)
    )
    if membership is None:
        return False
    if membership.role == "admin" and _admins(session, team.id) <= 1:
        raise Conflict(f"{user_name!r} is the last admin of team {team.name!r} and cannot be removed; make another member admin first")
    session.delete(membership)
    session.flush()
    return membership.role in ACTIVE_ROLES


def invitations(session: Session, user_id: int) -> list[tuple[str, str]]:
    """(team name, role offered) of the user's pending invitations."""
    rows = session.execute(
        select(Team.name, Membership.role).join(Team, Team.id == Membership.team_id)
        .where(Membership.user_id == user_id, Membership.role.startswith(INVITED)).order_by(Team.name)
    )
    return [(name, role.removeprefix(INVITED)) for name, role in rows]


def create_token(session: Session, user: User | str, name: str) -> tuple[ApiToken, str]:
    """A new API token for ``user``: the row and the secret, which is shown once and never stored."""
    check_token_name(name)
    user = get_user(session, user) if isinstance(user, str) else user
    return issue_token(session, user, name)


def create_admin(session: Session, team: str, user: str, token_name: str) -> str:
    """A team, a global admin who also administers it, and that admin's token (returned,
    shown once): the first account of a fresh installation, a test or a benchmark."""
    team_row = create_team(session, team)
    user_row = create_user(session, user, is_admin=True)
    add_member(session, team_row, user_row, "admin")
    return create_token(session, user_row, token_name)[1]


def list_teams(session: Session, team_ids: list[int] | None = None) -> list[Team]:
    """All teams (``team_ids=None``) or just those ids, by name."""
    query = select(Team).order_by(Team.name)
    if team_ids is not None:
        query = query.where(Team.id.in_(team_ids))
    return list(session.scalars(query))


def team_members(session: Session, team_id: int) -> list[tuple[str, str]]:
    """(user name, role) of each member, by name."""
    rows = session.execute(
        select(User.name, Membership.role).join(Membership, Membership.user_id == User.id).where(Membership.team_id == team_id, Membership.role.in_(ACTIVE_ROLES)).order_by(User.name)
    )
    return [(name, role) for name, role in rows]


def list_tokens(session: Session, user_id: int) -> list[ApiToken]:
    """The API tokens the user made (revoked ones too); never a web sign-in's session token."""
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.expires_at.is_(None)).order_by(ApiToken.id)))


def list_web_sessions(session: Session, user_id: int) -> list[ApiToken]:
    """The user's signed-in browsers: session tokens that still sign in (not expired, not revoked)."""
    query = select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.expires_at > utcnow(), ApiToken.revoked_at.is_(None))
    return list(session.scalars(query.order_by(ApiToken.id)))
