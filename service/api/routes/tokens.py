"""/tokens: make (shown once), list and revoke API tokens."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import CurrentUser, Id, SessionDep
from service.core.errors import Forbidden
from service.teams import accounts, tokens as security
from service.teams.schemas import TokenCreate, TokenCreated, TokenOut

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, user: CurrentUser, session: SessionDep) -> TokenCreated:
    """A new token for yourself (global admins: for anyone). The secret is in this response only."""
    owner = body.user or user.name
    if owner != user.name and not user.is_admin:
        raise Forbidden("only global admins may make tokens for other users")
    row, secret = accounts.create_token(session, owner, body.name)
    session.commit()
    return TokenCreated(token=secret, **TokenOut.of(row).model_dump())


@router.get("", response_model=list[TokenOut])
def list_tokens(user: CurrentUser, session: SessionDep) -> list[TokenOut]:
    """Your tokens, revoked ones included (never the secrets)."""
    return [TokenOut.of(t) for t in accounts.list_tokens(session, user.user_id)]


@router.delete("/{token_id}", response_model=TokenOut)
def revoke_token(token_id: Id, user: CurrentUser, session: SessionDep) -> TokenOut:
    row = security.revoke_token(session, user, token_id)
    session.commit()
    return TokenOut.of(row)
