"""What every request body shares: id and seed bounds, names and notes, and the strict
base model (no unknown fields, no NaN or infinity)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.core.text import NOTE_WHITESPACE, text_problem

NAME_MAX_CHARS = 200
NOTES_MAX_CHARS = 10_000
TOKEN_NAME_MAX_CHARS = 100
SEED_MAX = 2**31 - 1
# Ids are INTEGER columns (32-bit in PostgreSQL): a bigger number names nothing, and the
# database refuses to compare with it (a 500), so every id a request carries is bounded by this.
ID_MAX = 2**31 - 1
# Team and user names appear in URLs (/teams/{name}/members) and CLI output.
HANDLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"

Seed = Annotated[int, Field(ge=0, le=SEED_MAX, strict=True)]
HANDLE_RULE = "letters, digits, '_', '.', '-'; at most 100 characters; starting with a letter or digit"
Handle = Annotated[str, Field(pattern=HANDLE_PATTERN, description=HANDLE_RULE)]


def plain_text(text: str) -> str:
    """A name: no control characters, no terminal escapes (see service/core/text.py)."""
    problem = text_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def note_text(text: str) -> str:
    """Free text: as a name, but tabs and line breaks are fine."""
    problem = text_problem(text, allow=NOTE_WHITESPACE)
    if problem:
        raise ValueError(problem)
    return text


PlainText = Annotated[str, AfterValidator(plain_text)]
NoteText = Annotated[str, AfterValidator(note_text)]




class Strict(BaseModel):
    # A JSON body may spell NaN, Infinity or 1e999; none is a value caddie stores.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
