"""API tokens: made random, stored only as a SHA-256 hex digest, shown once.

A token looks like ``cad_<43 url-safe characters>`` (256 bits of randomness);
``prefix`` (its first 12 characters) is kept so people can tell tokens apart.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, delete, or_, select, update
from sqlalchemy.orm import Session

from service.core.errors import NotFound, Unauthorized
from service.core.models import ApiToken, Membership, Team, User, utcnow

# Roles that give access. A pending invitation is a membership row whose role is
# INVITED + the role offered: it gives nothing until the user accepts it.
ACTIVE_ROLES = ("member", "admin")
INVITED = "invited:"

TOKEN_PREFIX = "cad_"
DISPLAY_PREFIX_CHARS = 12


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """sha256(token) as 64 hex characters: what the database keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class Principal:
    """Who is calling: the user, and the teams they belong to with their role there."""

    user_id: int
    name: str
    is_admin: bool
    roles: dict[int, str] = field(default_factory=dict)  # team_id -> 'member' | 'admin'
    team_names: dict[int, str] = field(default_factory=dict)  # team_id -> name
    token_id: int | None = None

    @property
    def actor(self) -> str:
        """How run events name this caller."""
        return f"user:{self.name}"

    def can_see_team(self, team_id: int) -> bool:
        return self.is_admin or team_id in self.roles

    def can_manage_team(self, team_id: int) -> bool:
        return self.is_admin or self.roles.get(team_id) == "admin"


def issue_token(session: Session, user: User, name: str) -> tuple[ApiToken, str]:
    """Create a token for ``user``; return the row and the secret (never stored)."""
    secret = generate_token()
    row = ApiToken(user_id=user.id, name=name, token_hash=hash_token(secret), prefix=secret[:DISPLAY_PREFIX_CHARS])
    session.add(row)
    session.flush()
    return row, secret


def load_principal(session: Session, user: User, token_id: int | None = None) -> Principal:
    rows = session.execute(
        select(Membership.team_id, Membership.role, Team.name).join(Team, Team.id == Membership.team_id)
        .where(Membership.user_id == user.id, Membership.role.in_(ACTIVE_ROLES))
    ).all()
    return Principal(
        user_id=user.id,
        name=user.name,
        is_admin=user.is_admin,
        roles={tid: role for tid, role, _ in rows},
        team_names={tid: tname for tid, _, tname in rows},
        token_id=token_id,
    )


# One round trip per request: the token, its user and the user's teams.
_AUTH_QUERY = (
    select(
        ApiToken.id,
        ApiToken.revoked_at,
        ApiToken.last_used_at,
        ApiToken.expires_at,
        User.id.label("user_id"),
        User.name,
        User.is_admin,
        Membership.team_id,
        Membership.role,
        Team.name.label("team_name"),
    )
    .join(User, User.id == ApiToken.user_id)
    .outerjoin(Membership, and_(Membership.user_id == User.id, Membership.role.in_(ACTIVE_ROLES)))
    .outerjoin(Team, Team.id == Membership.team_id)
    # Built once with a bound parameter: SQLAlchemy then reuses its cache key and compiled form
    # (building the statement per request cost ~0.1 ms of CPU, on every request).
    .where(ApiToken.token_hash == bindparam("token_hash"))
)


def authenticate(session: Session, token: str | None, *, touch_interval_s: float = 60.0) -> Principal:
    """The caller behind ``token``; Unauthorized when it is missing, unknown or revoked.

    ``last_used_at`` is written at most once per ``touch_interval_s`` per token
    (a guarded UPDATE), so reads stay reads; that write is committed here.
    """
    if not token:
        raise Unauthorized("missing bearer token")
    return authenticate_hash(session, hash_token(token), touch_interval_s=touch_interval_s)


def authenticate_hash(session: Session, token_hash: str, *, touch_interval_s: float = 60.0) -> Principal:
    """As ``authenticate``, from the token's stored hash (what a web session cookie carries)."""
    rows = session.execute(_AUTH_QUERY, {"token_hash": token_hash}).all()
    if not rows:
        raise Unauthorized("invalid token")
    first = rows[0]
    if first.revoked_at is not None:
        raise Unauthorized("token revoked")
    now = utcnow()
    if first.expires_at is not None and first.expires_at <= now:
        raise Unauthorized("session expired; sign in again")
    stale = now - timedelta(seconds=touch_interval_s)
    if first.last_used_at is None or first.last_used_at < stale:
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == first.id, or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < stale))
            .values(last_used_at=now),
            execution_options={"synchronize_session": False},
        )
        session.commit()
    teams = [r for r in rows if r.team_id is not None]
    return Principal(
        user_id=first.user_id,
        name=first.name,
        is_admin=first.is_admin,
        roles={r.team_id: r.role for r in teams},
        team_names={r.team_id: r.team_name for r in teams},
        token_id=first.id,
    )


def web_session_name(token_id: int | None) -> str:
    return f"web session of #{token_id}"


def start_web_session(session: Session, principal: Principal, lifetime: timedelta) -> str:
    """A token of its own for one browser sign-in, made from the token the user signed in
    with, expiring after ``lifetime`` (CADDIE_WEB_SESSION_DAYS); the cookie carries its hash.
    Sign-out deletes it, so a copy of the cookie kept from before is dead on the server (the
    cookie alone could not be recalled). The user's own dead session tokens go here too."""
    user = session.get_one(User, principal.user_id)
    prune_web_sessions(session, user_id=user.id)
    row, _secret = issue_token(session, user, web_session_name(principal.token_id))  # the secret is never needed
    row.expires_at = utcnow() + lifetime
    session.flush()
    return row.token_hash


def end_web_session(session: Session, principal: Principal) -> None:
    """Sign-out: the session's token is deleted (an API token signed in with stays as it is)."""
    if principal.token_id is not None:
        session.execute(delete(ApiToken).where(ApiToken.id == principal.token_id, ApiToken.user_id == principal.user_id,
                                               ApiToken.expires_at.is_not(None)))  # fmt: skip


def prune_web_sessions(session: Session, *, user_id: int | None = None, now: datetime | None = None, limit: int = 5000) -> int:
    """Delete session tokens that sign in no more: expired, or revoked with the token they were
    made from (API tokens, with no expiry, are never deleted here). One user's at sign-in, every
    user's in the janitor's round, at most ``limit`` a call. Returns how many went."""
    now = now or utcnow()
    dead = select(ApiToken.id).where(ApiToken.expires_at.is_not(None), or_(ApiToken.expires_at <= now, ApiToken.revoked_at.is_not(None)))
    if user_id is not None:
        dead = dead.where(ApiToken.user_id == user_id)
    ids = list(session.scalars(dead.order_by(ApiToken.expires_at).limit(limit)))
    if ids:
        session.execute(delete(ApiToken).where(ApiToken.id.in_(ids)))
    return len(ids)


def revoke_token(session: Session, principal: Principal, token_id: int) -> ApiToken:
    """Revoke one of the caller's tokens (global admins: anyone's), and the web sessions
    signed in with it. Idempotent."""
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != principal.user_id and not principal.is_admin):
        raise NotFound("token", token_id)
    now = utcnow()
    session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == row.user_id, ApiToken.revoked_at.is_(None),
               or_(ApiToken.id == row.id, ApiToken.name == web_session_name(row.id)))
        .values(revoked_at=now),
        execution_options={"synchronize_session": False},
    )
    session.flush()
    session.refresh(row)
    return row
