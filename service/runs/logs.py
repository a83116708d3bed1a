"""A run's log as stored, and its one home at each moment of the run's life.

    while the run is active     log_chunks rows at byte offsets (the live tail: the worker
                                appends whole lines, readers page by offset)
    once it has ended           one file in the artifact store, runs/<id>/log/stdout.log,
                                with its artifacts row; the chunks are deleted in the same
                                commit that records that row (archive_log)

Why the store and not the database for an ended run: an ended log never changes again, it
is read whole (export, download) or by a byte range (the page's tail), and the store is where
a run's other files already live, with retention and a quota that counts them. Rows of text in
PostgreSQL cost the database's disk, its backups and its vacuum for every log ever written.
Why the database while it runs: the live tail needs appends that readers see at once, offsets
that a crash cannot tear, and the same transaction as the metric points parsed from them.

The job's own stdout.log in its run folder is not stored a second time: the archive *is* the
run's stdout.log (every attempt, caddie's notes between them, the CADDIE_LOG_MAX_BYTES head);
the run folder goes with retention (worker.control.retention). A trainer run's train.log stays
an output file of its own: the records export needs the trainer's file byte for byte.

One writer of chunks (append_log): the worker's log stream and its requeue note both go
through it. Reads (read_log) give the same byte offsets, pages and ``done`` from either home.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.billing.storage import LOG_KIND, LOG_SUFFIX, counted
from service.core.errors import Gone, Unavailable
from service.core.models import Artifact, LogChunk, Run, utcnow
from service.core.status import TERMINAL, is_terminal
from service.core.storage import ArtifactMissing, ArtifactOutsideStore, ArtifactStore, ArtifactStoreError, artifact_key, read_chunks
from service.runs.queries import visible_run
from service.teams.tokens import Principal

log = logging.getLogger(__name__)

LOG_PAGE_BYTES = 1 << 20
ARCHIVE_KIND = LOG_KIND
ARCHIVE_NAME = "stdout.log"  # the name the job's own stream has in its run folder; export reads it for script runs
ARCHIVE_SUFFIX = "/" + artifact_key(0, ARCHIVE_KIND, ARCHIVE_NAME).split("/", 2)[2]  # "/log/stdout.log": how a row is known
assert ARCHIVE_SUFFIX == LOG_SUFFIX  # the quota's running total knows an archive the same way


# GET /runs/{id}/logs answers this class: a field's description (metadata) is what the API's schema says of it.
@dataclass
class LogSlice:
    """A piece of a run's log."""

    offset: int = field(metadata={"description": "byte offset of data[0] in the run's log"})
    next_offset: int = field(metadata={"description": "ask for this offset next"})
    data: str
    done: bool = field(metadata={"description": "the run is finished and no more log will come"})


def archive_row(session: Session, run_id: int) -> Artifact | None:
    """The artifacts row of the run's archived log, if it has one."""
    query = select(Artifact).where(Artifact.run_id == run_id, Artifact.kind == ARCHIVE_KIND, Artifact.uri.endswith(ARCHIVE_SUFFIX))
    return session.scalars(query.order_by(Artifact.id.desc()).limit(1)).first()


def read_log(session: Session, principal: Principal, run_id: int, offset: int = 0, max_bytes: int = LOG_PAGE_BYTES,
             store: ArtifactStore | None = None) -> LogSlice:  # fmt: skip
    """The run's log from byte ``offset``: about ``max_bytes`` (whole chunks, or whole lines of the
    archive; at least one), ``next_offset`` to ask for next, and ``done`` once the run is terminal
    and nothing is left after ``next_offset``. ``store``: where an ended run's log is (without it,
    an archived log reads as empty)."""
    # Status first: a worker writes the last chunks before the final
    # transition, so a terminal status read here means all chunks are visible.
    _, status = visible_run(session, principal, run_id)
    terminal = is_terminal(status)
    piece = _read_chunks(session, run_id, offset, max_bytes, terminal)
    if piece is not None or not terminal:
        return piece or LogSlice(offset=offset, next_offset=offset, data="", done=False)
    # No chunk at all and the run has ended: its log is archived (the chunks go in the commit that
    # records the archive, so a reader who found none finds the row), or it never wrote one.
    row = archive_row(session, run_id)
    if row is None or store is None:
        return LogSlice(offset=offset, next_offset=offset, data="", done=True)
    return _read_archive(store, row, offset, max_bytes)


def _read_chunks(session: Session, run_id: int, offset: int, max_bytes: int, terminal: bool) -> LogSlice | None:
    """From the chunks; None when the run has none at all."""
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
    if first is None:
        if start is None and session.scalar(select(LogChunk.id).where(LogChunk.run_id == run_id).limit(1)) is None:
            return None
        return LogSlice(offset=offset, next_offset=offset, data="", done=terminal)
    if end <= offset:
        return LogSlice(offset=offset, next_offset=offset, data="", done=terminal and not more)
    blob = b"".join(pieces)[offset - first :]
    return LogSlice(offset=offset, next_offset=end, data=blob.decode("utf-8", errors="replace"), done=terminal and not more)


def whole_log(session: Session, run_id: int, store: ArtifactStore) -> bytes:
    """The run's whole stored log as bytes, from its chunks or, once archived, from its file
    (export's fallback, tests; a page reader uses read_log)."""
    chunks = list(session.scalars(select(LogChunk.data).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)))
    if chunks:
        return "".join(chunks).encode("utf-8")
    row = archive_row(session, run_id)
    if row is None:
        return b""
    try:
        return b"".join(read_chunks(store.open(row.uri)))
    except ArtifactMissing:
        return b""
    except ArtifactOutsideStore:  # never read (see _read_archive): as if gone
        log.warning("run %s: its archived log %s is outside the artifact store; not read", run_id, row.uri)
        return b""


def _read_archive(store: ArtifactStore, row: Artifact, offset: int, max_bytes: int) -> LogSlice:
    """A page of the archived log: whole lines up to ``max_bytes`` (the first line whole if longer, as
    a chunk was), so a page never ends inside a character and offsets stay the chunks' offsets."""
    size = int(row.bytes or 0)
    if offset >= size:
        return LogSlice(offset=offset, next_offset=offset, data="", done=True)
    try:
        stream = store.open(row.uri)
    except ArtifactMissing:  # removed under it (a store emptied by hand): the log is gone, not pending
        return LogSlice(offset=offset, next_offset=offset, data="", done=True)
    except ArtifactOutsideStore:
        # A database restored or moved beside another store (its rows name the old one): never read, and the
        # uri is not echoed to the caller (it would tell server paths or bucket names).
        log.warning("run %s: its archived log %s is outside the artifact store; not read", row.run_id, row.uri)
        raise Gone(f"run {row.run_id}'s log is not in this caddie's artifact store (the database names another store); not read") from None
    except ArtifactStoreError as exc:
        log.warning("run %s: its archived log cannot be read: %s", row.run_id, exc)
        raise Unavailable(f"the artifact store cannot be read now; try again later (run {row.run_id}'s log)") from None
    with stream:
        _skip(stream, offset)
        data = stream.read(max_bytes)
        while offset + len(data) < size and b"\n" not in data:  # one line longer than a page: it comes whole
            more = stream.read(max_bytes)
            if not more:
                break
            data += more
    if offset + len(data) < size:
        data = data[: data.rfind(b"\n") + 1] or data
    end = offset + len(data)
    return LogSlice(offset=offset, next_offset=end, data=data.decode("utf-8", errors="replace"), done=end >= size)


def _skip(stream: IO[bytes], n: int) -> None:
    if n <= 0:
        return
    try:
        if stream.seekable():
            stream.seek(n)
            return
    except (AttributeError, OSError):
        pass
    while n > 0:  # a stream without seek (an S3 body): read past the head
        got = stream.read(min(n, 1 << 20))
        if not got:
            return
        n -= len(got)


def append_log(session: Session, run_id: int, text: str, *, attempt: int = 1, offset: int | None = None,
               log_end: int | None = None, **also: Any) -> int:  # fmt: skip
    """The one writer of log chunks: ``text`` at byte ``offset`` of the run's log (the run's
    ``log_bytes`` when not given), and ``runs.log_bytes`` set to ``log_end`` (else the chunk's end),
    with ``also`` (e.g. log_truncated_at) in the same UPDATE. The caller commits; the unique
    (run_id, offset) refuses a second writer of the same bytes. Returns the new log_bytes.

    ``text`` must have the UTF-8 length of the bytes it stands for (worker.run.log_stream.decode_log
    keeps it so), or offsets drift from the job's own log.
    """
    with counted(session, run_id):  # the team's stored bytes move with the log's, in this transaction
        if offset is None:
            offset = int(session.scalar(select(Run.log_bytes).where(Run.id == run_id)) or 0)
        end = log_end if log_end is not None else offset + len(text.encode("utf-8"))
        # The UPDATE first: the chunk then reaches the database with the caller's commit, where a
        # duplicate offset raises (the caller decides what a second writer means).
        session.execute(update(Run).where(Run.id == run_id).values(log_bytes=end, **also), execution_options={"synchronize_session": False})
    if text:
        session.add(LogChunk(run_id=run_id, offset=offset, data=text, created_at=utcnow(), attempt=attempt))
    return end


# --- the end of a run: chunks -> one file ---------------------------------------------------------
@dataclass
class LogFile:
    """The run's chunks written to the store (not yet recorded): what ``record_archive`` checks and records."""

    run_id: int
    uri: str
    bytes: int
    sha256: str
    chunks: int  # how many chunks it holds: a chunk added meanwhile means it is not the whole log


def write_archive(session: Session, store: ArtifactStore, run_id: int) -> LogFile | None:
    """Write the run's chunks, in offset order, to the store as one file; None when it has none.

    Writing the same key again replaces the file, so a crash before ``record_archive`` commits only
    means the next try writes it again: until then the chunks are the log. Stops at a gap (bytes
    read past the log cap but not stored, then a requeue note): a reader following the log never
    got past one either.
    """
    # Counted before they are read: a chunk added meanwhile makes record_archive refuse this file.
    total = session.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == run_id)) or 0
    if not total:
        return None
    query = select(LogChunk.offset, LogChunk.data).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)
    with tempfile.TemporaryDirectory(prefix=f"caddie-log-{run_id}-") as folder:
        path = Path(folder) / ARCHIVE_NAME  # the store names the object after the file
        end = 0
        with open(path, "wb") as out:
            for chunk_offset, data in session.execute(query.execution_options(yield_per=64)):
                if chunk_offset != end:
                    break
                raw = data.encode("utf-8")
                out.write(raw)
                end += len(raw)
        uri, size, sha = store.put(run_id, ARCHIVE_KIND, path)
    return LogFile(run_id=run_id, uri=uri, bytes=size, sha256=sha, chunks=int(total))


def record_archive(session: Session, archived: LogFile) -> bool:
    """In the caller's transaction: the archive's artifacts row in, the run's chunks out (one
    commit, so a reader finds one home or the other, never neither). False, changing nothing,
    when chunks were added since it was written (the caller writes it again later)."""
    with counted(session, archived.run_id):  # chunk bytes out of the team's total, the file's in
        count = session.scalar(select(func.count()).select_from(LogChunk).where(LogChunk.run_id == archived.run_id))
        if count != archived.chunks:
            return False
        session.execute(delete(Artifact).where(Artifact.run_id == archived.run_id, Artifact.kind == ARCHIVE_KIND, Artifact.uri.endswith(ARCHIVE_SUFFIX)))
        session.add(Artifact(run_id=archived.run_id, kind=ARCHIVE_KIND, uri=archived.uri, bytes=archived.bytes, sha256=archived.sha256, created_at=utcnow()))
        session.execute(delete(LogChunk).where(LogChunk.run_id == archived.run_id), execution_options={"synchronize_session": False})
    return True


def archive_ended_logs(session: Session, store: ArtifactStore, *, limit: int = 50) -> int:
    """Archive the logs of ended runs that still hold chunks (ended by a cancel before launch, by the
    janitor, by a worker that died after its final commit, or before this code): a sweep, safe to
    run any time and twice. Commits per run; returns how many were archived."""
    ended = select(LogChunk.run_id).join(Run, Run.id == LogChunk.run_id).where(Run.status.in_([s.value for s in TERMINAL])).distinct().limit(limit)
    done = 0
    for run_id in list(session.scalars(ended)):
        try:
            archived = write_archive(session, store, run_id)
        except ArtifactStoreError:
            session.rollback()
            continue  # a full disk or an unreachable bucket: the chunks stay the log, next round tries again
        if archived is not None and record_archive(session, archived):
            done += 1
        session.commit()
    return done
