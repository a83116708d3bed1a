"""A run's log on its way into the database: new bytes of the job's log become
log_chunks rows and their metric points metrics rows, one transaction per read.

Offsets run on across attempts (one log per run); an attempt's job log starts at
``base`` of it. Only whole lines are stored while the job runs (a line is never
split between two chunks unless it grows past MAX_PENDING_LINE_BYTES), so the
parser (service.runs.logparse) sees each line once.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.models import LogChunk, Metric
from service.runs.logparse import LogParser, MetricPoint, ScriptLogParser
from service.runs.logs import append_log
from worker.launchers.base import Launcher, LauncherUnreachable, LaunchHandle, RetryLater
from worker.run.lease import with_db_retry

log = logging.getLogger(__name__)

# A log line longer than this is stored in pieces rather than waited for.
MAX_PENDING_LINE_BYTES = 64 * 1024
# Train-loss points one attempt of a run keeps (CADDIE_MAX_TRAIN_POINTS): past it the curve is thinned.
DEFAULT_MAX_TRAIN_POINTS = 10_000


def storable(offset: int, data: bytes, cap: int | None) -> int:
    """How many leading bytes of ``data`` (the run's log from ``offset``) to store under ``cap``
    bytes a run: all of them below it, none past it, and where it is crossed, up to the last
    whole line before it (the first line alone, cut, when one line crosses it)."""
    if cap is None or offset + len(data) <= cap:
        return len(data)
    room = max(0, cap - offset)
    return data.rfind(b"\n", 0, room) + 1 or room


def thinned_stride(stride: int, stored: int, steps: list[int], cap: int) -> int:
    """The stride (a power of two) train points are kept at, so that the ``stored`` points (kept at
    ``stride``) and the new ``steps`` stay within ``cap``: every doubling keeps about half of both.
    Validation points and the final figures are never thinned."""
    while stored + sum(1 for s in steps if s % stride == 0) > cap:
        stride *= 2
        stored //= 2  # about half the points kept at a stride lie on the doubled one
    return stride


def _same_length_replace(err: UnicodeError) -> tuple[str, int]:
    assert isinstance(err, UnicodeDecodeError)  # registered for decoding only
    # One '?' per undecodable byte keeps the stored text's UTF-8 length equal to
    # the bytes read, so log offsets stay byte offsets of the job's own log.
    return "?" * (err.end - err.start), err.end


codecs.register_error("caddie_same_length", _same_length_replace)


def decode_log(data: bytes) -> str:
    """Log bytes as text of exactly the same UTF-8 length (bad bytes and NULs become '?')."""
    return data.decode("utf-8", errors="caddie_same_length").replace("\x00", "?")


def complete_part(data: bytes, final: bool) -> int:
    """How many leading bytes of `data` to store now: whole lines, unless the job
    ended (everything) or a line grew too long (cut at a character boundary)."""
    if final:
        return len(data)
    cut = data.rfind(b"\n") + 1
    if cut or len(data) < MAX_PENDING_LINE_BYTES:
        return cut
    # Cut before the last character's first byte (it may be incomplete); the
    # rest comes with the next read.
    cut = len(data) - 1
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # continuation bytes 10xxxxxx
        cut -= 1
    return cut or len(data)


class RunLog:
    """One attempt's log of a run, as far as it is stored; ``parser.summary`` holds what it said."""

    def __init__(self, run_id: int, session_factory: Callable[[], Session], *, retry_s: float, script: bool, attempt: int, offset: int, base: int,
                 max_train_points: int = DEFAULT_MAX_TRAIN_POINTS, log_max_bytes: int | None = None, truncated_at: int | None = None) -> None:
        self.run_id = run_id
        self.session_factory = session_factory
        self.retry_s = retry_s
        self.script = script  # a team's own train_gpt.py: its log is read by the script parser
        self.parser: LogParser | ScriptLogParser = ScriptLogParser() if script else LogParser()
        self.attempt = attempt  # which launch of the run this is (runs.attempts + 1)
        self.offset = offset  # bytes of the run's log read so far (all attempts)
        # The log cap (CADDIE_LOG_MAX_BYTES): the log's head is stored, up to the cap; the rest is
        # still read and parsed (metrics, final figures) but not stored, and the run says where
        # storing stopped (runs.log_truncated_at). The run goes on: its result is what it is for.
        self.log_max_bytes = log_max_bytes
        self.truncated_at = truncated_at
        self.base = base  # where this attempt's log starts in the run's log
        self.seen_all = offset == base  # the parser reads this attempt's log from its first byte
        # A log of 2M `step:` lines made 2M metric rows (a 210 MB /metrics answer): train points
        # are kept at every `stride`-th step, the stride doubling (and the stored points thinned
        # to it) whenever they would pass max_train_points.
        self.max_train_points = max_train_points
        self.stride = 1
        self.train_stored = 0

    def pull(self, launcher: Launcher, handle: LaunchHandle, final: bool, on_points: Callable[[list[MetricPoint]], None]) -> None:
        """Copy what is new of the job's log (everything once ``final``); ``on_points`` gets the points of each stored read."""
        while True:
            try:
                data = launcher.read_log(handle, self.offset - self.base)
            except (LauncherUnreachable, RetryLater) as exc:
                log.warning("run %s: cannot read the log now (%s)", self.run_id, exc)
                return
            n = complete_part(data, final)
            if n <= 0:
                break
            text = decode_log(data[:n])
            points = self.parser.feed(text)
            if final:
                points += self.parser.flush()

            stride = thinned_stride(self.stride, self.train_stored, [p.step for p in points if p.kind == "train"], self.max_train_points)
            kept = [p for p in points if p.kind != "train" or p.step % stride == 0]

            truncated_at = self.truncated_at
            keep = 0 if truncated_at is not None else storable(self.offset, data[:n], self.log_max_bytes)
            if truncated_at is None and keep < n:
                truncated_at = self.offset + keep

            def write() -> None:
                with self.session_factory() as session:
                    stored = "" if not keep else text if keep == n else decode_log(data[:keep])
                    # The one writer of chunks (service.runs.logs); log_bytes counts every byte read, stored or not.
                    append_log(session, self.run_id, stored, attempt=self.attempt, offset=self.offset, log_end=self.offset + n, log_truncated_at=truncated_at)
                    session.add_all(
                        Metric(run_id=self.run_id, kind=p.kind, step=p.step, train_loss=p.train_loss, val_loss=p.val_loss, val_bpb=p.val_bpb,
                               elapsed_ms=p.elapsed_ms, attempt=self.attempt)
                        for p in kept
                    )  # fmt: skip
                    if stride != self.stride:
                        session.execute(delete(Metric).where(Metric.run_id == self.run_id, Metric.attempt == self.attempt, Metric.kind == "train",
                                                             Metric.step % stride != 0), execution_options={"synchronize_session": False})  # fmt: skip
                    try:
                        session.commit()
                    except IntegrityError:
                        # This offset is already stored (an earlier executor, or an earlier
                        # try of this commit, got this far); skip ahead.
                        session.rollback()

            with_db_retry(write, what=f"run {self.run_id}: store its log", deadline_s=self.retry_s)
            self.offset += n
            self.truncated_at = truncated_at
            if stride != self.stride:
                self.stride, self.train_stored = stride, self._count_train()
            else:
                self.train_stored += sum(1 for p in kept if p.kind == "train")
            on_points(points)
            if n < len(data):
                break  # the rest is an unfinished line

    def _count_train(self) -> int:
        def count() -> int:
            with self.session_factory() as session:
                return int(session.scalar(select(func.count()).select_from(Metric).where(
                    Metric.run_id == self.run_id, Metric.attempt == self.attempt, Metric.kind == "train")) or 0)  # fmt: skip

        return with_db_retry(count, what=f"run {self.run_id}: count its points", deadline_s=self.retry_s)

    def reread(self) -> None:
        """Parse again what the DB holds of this attempt's log, when this executor has not seen its start
        (a re-attached one). One that read it all has nothing to learn: a 300 MB log with no final figure
        was re-read whole (the worker from 230 to 1,183 MiB). The chunks stream through the parser."""
        if self.seen_all:
            return

        def read() -> LogParser | ScriptLogParser:
            parser = ScriptLogParser() if self.script else LogParser()
            with self.session_factory() as session:
                query = select(LogChunk.data).where(LogChunk.run_id == self.run_id, LogChunk.attempt == self.attempt).order_by(LogChunk.offset)
                for text in session.scalars(query.execution_options(yield_per=4)):
                    parser.feed(text)
            parser.flush()
            return parser

        self.train_stored = self._count_train()  # a re-attached executor thins from what is stored
        self.parser = with_db_retry(read, what=f"run {self.run_id}: read its log", deadline_s=self.retry_s)
        self.seen_all = True
