"""/tokens: make (shown once), list and revoke API tokens; list and end web sessions."""

from __future__ import annotations

from fastapi import APIRouter

from service.core.errors import Forbidden
from service.http.deps import CurrentUser, Id, SessionDep
from service.teams import accounts, tokens as security
from service.teams.schemas import TokenCreate, TokenCreated, TokenOut, WebSessionOut

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
    """The API tokens you made, revoked ones included (never the secrets); web sign-ins are
    listed apart, at /tokens/sessions."""
    return [TokenOut.of(t) for t in accounts.list_tokens(session, user.user_id)]


@router.get("/sessions", response_model=list[WebSessionOut])
def list_web_sessions(user: CurrentUser, session: SessionDep) -> list[WebSessionOut]:
    """Your signed-in browsers (web sign-ins that have not ended); DELETE /tokens/{id} ends one."""
    return [WebSessionOut.of(t) for t in accounts.list_web_sessions(session, user.user_id)]


@router.delete("/{token_id}", response_model=TokenOut)
def revoke_token(token_id: Id, user: CurrentUser, session: SessionDep) -> TokenOut:
    """Revoke a token (and the web sessions signed in with it), or end a web session."""
    row = security.revoke_token(session, user, token_id)
    session.commit()
    return TokenOut.of(row)
