"""A run's log as stored: chunks at byte offsets, read a page at a time."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import LogChunk, Run
from service.runs.queries import visible_run
from service.runs.status import is_terminal
from service.teams.tokens import Principal

LOG_PAGE_BYTES = 1 << 20


@dataclass
class LogSlice:
    offset: int
    next_offset: int
    data: str
    done: bool


def read_log(session: Session, principal: Principal, run_id: int, offset: int = 0, max_bytes: int = LOG_PAGE_BYTES) -> LogSlice:
    """The run's log from byte ``offset``: whole chunks up to about ``max_bytes``
    (at least one), ``next_offset`` to ask for next, and ``done`` once the run is
    terminal and nothing is left after ``next_offset``."""
    # Status first: a worker writes the last chunks before the final
    # transition, so a terminal status read here means all chunks are visible.
    _, status = visible_run(session, principal, run_id)
    terminal = is_terminal(status)
    start = session.scalar(select(LogChunk.offset).where(LogChunk.run_id == run_id, LogChunk.offset <= offset).order_by(LogChunk.offset.desc()).limit(1))
    query = select(LogChunk.offset, LogChunk.data).where(LogChunk.run_id == run_id, LogChunk.offset >= (start if start is not None else offset)).order_by(LogChunk.offset)
    pieces: list[bytes] = []
    first: int | None = None
    end = offset
    more = False
    for chunk_offset, data in session.execute(query):
        if first is None:
            first = chunk_offset
        elif chunk_offset != end:  # a gap: stop, the rest has not arrived yet
            more = True
            break
        if pieces and end - offset >= max_bytes:
            more = True
            break
        raw = data.encode("utf-8")
        pieces.append(raw)
        end = chunk_offset + len(raw)
    if first is None or end <= offset:
        return LogSlice(offset=offset, next_offset=offset, data="", done=terminal and not more)
    blob = b"".join(pieces)[offset - first :]
    return LogSlice(offset=offset, next_offset=end, data=blob.decode("utf-8", errors="replace"), done=terminal and not more)


def append_log(session: Session, run: Run, text: str) -> LogChunk | None:
    """Add ``text`` to the end of the run's log (for the worker; caller commits).

    The chunk's offset is the run's current ``log_bytes``, which grows by the
    UTF-8 size of ``text``, so read_log's byte offsets line up. One writer per
    run (its executor); the unique (run_id, offset) catches a second one.
    """
    if not text:
        return None
    chunk = LogChunk(run_id=run.id, offset=run.log_bytes or 0, data=text)
    session.add(chunk)
    run.log_bytes = (run.log_bytes or 0) + len(text.encode("utf-8"))
    session.flush()
    return chunk
