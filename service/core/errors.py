"""Domain errors. The API maps each to one HTTP status in service/http/errors.py;
the CLI prints them as one-line messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DomainError(Exception):
    """Base of every error the domain functions raise on purpose."""


class NotFound(DomainError):
    """No such thing, or the caller may not see it (other teams' runs look absent)."""

    def __init__(self, kind: str, key: Any):
        self.kind, self.key = kind, key
        super().__init__(f"{kind} {key!r} not found")


class AlreadyExists(DomainError):
    def __init__(self, kind: str, key: Any):
        self.kind, self.key = kind, key
        super().__init__(f"{kind} {key!r} already exists")


class Conflict(DomainError):
    """The request is valid but the current state forbids it (e.g. cancelling a finished run)."""


class Gone(DomainError):
    """The thing is known, but what it points at can no longer be served (a stored file left the store)."""


class Unavailable(DomainError):
    """A backing service (e.g. the S3 artifact store) cannot be reached now; trying later may work."""


class Forbidden(DomainError):
    """The caller is known but lacks the role for this action."""


class Unauthorized(DomainError):
    """No token, an unknown token or a revoked token."""


@dataclass
class Issue:
    """One bad input: where it is (``("config", "NUM_HEADS")``), what is wrong, the value."""

    loc: tuple[str | int, ...]
    msg: str
    input: Any = None
    type: str = "value_error"


@dataclass
class InvalidInput(DomainError):
    issues: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, i.loc))}: {i.msg}" for i in self.issues))

    def __str__(self) -> str:
        return "; ".join(f"{'.'.join(map(str, i.loc))}: {i.msg}" for i in self.issues)
