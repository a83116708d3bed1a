"""Every error becomes ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``
with one status code per error kind, mapped here and nowhere else."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import AlreadyExists, Conflict, DomainError, Forbidden, Gone, InvalidInput, NotFound, Unauthorized, Unavailable
from service.core.status import IllegalTransition

STATUS: list[tuple[type[Exception], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not_found"),
    (AlreadyExists, 409, "already_exists"),
    (Conflict, 409, "conflict"),
    (IllegalTransition, 409, "illegal_transition"),
    (Gone, 410, "gone"),
    (Unavailable, 503, "unavailable"),
]


RETRY_AFTER_S = "1"  # seconds; the pool drops a dead connection at once, so the next try may already work


def database_unavailable(exc: BaseException) -> bool:
    """A database error that says "not now" rather than "this request is wrong"."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _body(detail: list[dict[str, Any]]) -> dict[str, Any]:
    return {"detail": json_safe(detail)}


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON can carry it. An error echoes what was sent, and
    that may be NaN, 1e999 (inf), a lone surrogate or an exception: each becomes
    text (``"nan"``, ``"inf"``, ``"\\ud800"``) so that the error itself never fails."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return json_safe(str(value))


def invalid_input_response(exc: InvalidInput) -> JSONResponse:
    detail = []
    for issue in exc.issues:
        loc = list(issue.loc)
        if loc and loc[0] not in ("query", "header", "path", "body"):
            loc = ["body", *loc]
        detail.append({"loc": loc, "msg": issue.msg, "type": issue.type, "input": issue.input})
    return JSONResponse(_body(detail), status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, InvalidInput):
            return invalid_input_response(exc)
        for kind, status, name in STATUS:
            if isinstance(exc, kind):
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                return JSONResponse(_body([{"msg": str(exc), "type": name}]), status_code=status, headers=headers)
        return JSONResponse(_body([{"msg": str(exc), "type": "error"}]), status_code=400)

    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, list) else [{"msg": str(exc.detail), "type": "http_error"}]
        return JSONResponse(_body(detail), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{k: v for k, v in err.items() if k in ("loc", "msg", "type", "input", "ctx")} for err in exc.errors()]
        return JSONResponse(_body(detail), status_code=422)

    async def database_gone(_request: Request, exc: Exception) -> JSONResponse:
        # The database is down, restarting or failing over (refused or lost connections, a
        # pooled connection it closed, a full pool): the request may be retried as it is.
        # 503 + Retry-After tells clients so (the CLI and the web retry idempotent calls),
        # never an anonymous 500. Other database errors are bugs and stay 500s.
        if database_unavailable(exc):
            return JSONResponse(_body([{"msg": "the database is unavailable; retry the request", "type": "unavailable"}]),
                                status_code=503, headers={"Retry-After": RETRY_AFTER_S})
        raise exc

    app.add_exception_handler(DBAPIError, database_gone)
    app.add_exception_handler(PoolTimeout, database_gone)
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(IllegalTransition, domain_error)
    # Starlette types a handler as taking any Exception; these take the one they are registered for.
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
