"""Request and response bodies of the team, user and token endpoints (pydantic v2)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from service.core.bodies import (
    TOKEN_NAME_MAX_CHARS,
    Handle,
    PlainText,
    Strict,
)
from service.core.models import ApiToken, Team, User
from service.teams.webhook_url import masked


class TeamCreate(Strict):
    name: Handle
    budget_gpu_hours: float | None = Field(None, ge=0)
    weight: float = Field(1.0, gt=0, le=1000)


class MemberOut(BaseModel):
    user: str
    role: str


class TeamOut(BaseModel):
    id: int
    name: str
    budget_gpu_hours: float | None
    weight: float
    created_at: datetime
    webhook: str | None = Field(None, description="the team's webhook, scheme and host only (a chat webhook's path is its secret); null: none")
    members: list[MemberOut] = Field(default_factory=list)

    @classmethod
    def of(cls, team: Team, members: list[tuple[str, str]] | None = None) -> "TeamOut":
        return cls(
            id=team.id,
            name=team.name,
            budget_gpu_hours=team.budget_gpu_hours,
            weight=team.weight,
            created_at=team.created_at,
            webhook=masked(team.webhook_url),
            members=[MemberOut(user=u, role=r) for u, r in members or []],
        )


class MemberAdd(Strict):
    user: Handle
    role: Literal["member", "admin"] = "member"


class UserCreate(Strict):
    name: Handle
    email: PlainText | None = Field(None, max_length=320)
    is_admin: bool = False


class TeamRole(BaseModel):
    team: str
    role: str


class UserOut(BaseModel):
    id: int
    name: str
    email: str | None
    is_admin: bool
    created_at: datetime
    teams: list[TeamRole] = Field(default_factory=list)
    invitations: list[TeamRole] = Field(default_factory=list, description="teams that invited you (accept with POST /teams/{name}/accept)")

    @classmethod
    def of(cls, user: User, teams: list[tuple[str, str]] | None = None, invitations: list[tuple[str, str]] | None = None) -> "UserOut":
        return cls(
            id=user.id,
            name=user.name,
            email=user.email,
            is_admin=user.is_admin,
            created_at=user.created_at,
            teams=[TeamRole(team=t, role=r) for t, r in teams or []],
            invitations=[TeamRole(team=t, role=r) for t, r in invitations or []],
        )


class TokenCreate(Strict):
    name: PlainText = Field(min_length=1, max_length=TOKEN_NAME_MAX_CHARS)
    user: Handle | None = Field(None, description="global admins may make tokens for other users")


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    user_id: int
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, token: ApiToken) -> "TokenOut":
        return cls(
            id=token.id,
            name=token.name,
            prefix=token.prefix,
            user_id=token.user_id,
            created_at=token.created_at,
            last_used_at=token.last_used_at,
            revoked_at=token.revoked_at,
        )


class WebSessionOut(BaseModel):
    """A signed-in browser: the token a web sign-in made for itself (ended by sign-out, by
    DELETE /tokens/{id}, or by revoking the token it was made from)."""

    id: int
    name: str = Field(description="'web session of #N': N is the token signed in with")
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime

    @classmethod
    def of(cls, token: ApiToken) -> "WebSessionOut":
        assert token.expires_at is not None  # only session tokens expire
        return cls(id=token.id, name=token.name, created_at=token.created_at, last_used_at=token.last_used_at, expires_at=token.expires_at)


class TokenCreated(TokenOut):
    token: str = Field(description="the secret; shown only in this response")
