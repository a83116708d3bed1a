"""The public frontier inside caddie: imported record folders stored, and shown as groups.

``caddie records import PATH`` reads every record folder (service.results.public_records) and
stores one ``PublicRecord`` row each. A stored record becomes a read-only ``GroupView``
(key ``record:<folder>``, kind ``record``) so the leaderboard, compare and export treat it
like a group; it is never added to the session.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.errors import NotFound
from service.core.models import PublicRecord, RunGroup, Team
from service.core.status import RunStatus
from service.results import public_records as pr
from service.results.groups import SeedRow, aggregate
from service.results.rules import RECORD_HARDWARE, Verdict, overall
from service.results.views import GroupView

RECORD_PREFIX = "record:"
RECORD_KIND = "record"
PUBLIC_TEAM = "public record"


def record_seeds(record: pr.PublicRecord) -> list[dict[str, Any]]:
    """One entry per seed: submission.json's per-seed figures where it gives them, each missing
    figure from that seed's log; with no per-seed JSON, the logs of the submission (one per seed)."""
    logs = [log for log in record.logs if pr.is_record_log(record, log)]
    by_seed: dict[int, pr.LogFacts] = {}
    for facts in logs:
        if facts.seed is not None:
            by_seed.setdefault(facts.seed, facts)
    out = []
    if record.seeds:
        for s in record.seeds:
            log = by_seed.get(s.seed)
            out.append({
                "seed": s.seed, "source": "submission.json" + (f" + {log.name}" if log else ""),
                "val_bpb": s.val_bpb if s.val_bpb is not None else (log.val_bpb if log else None),
                "val_loss": s.val_loss if s.val_loss is not None else (log.val_loss if log else None),
                "artifact_bytes": s.artifact_bytes if s.artifact_bytes is not None else (log.artifact_bytes if log else None),
                "steps": s.steps if s.steps is not None else (log.steps if log else None),
                "train_seconds": s.train_seconds if s.train_seconds is not None else (log.train_seconds if log else None),
                "eval_seconds": s.eval_seconds if s.eval_seconds is not None else (log.eval_seconds if log else None),
                "pre_ttt_bpb": s.pre_ttt_bpb if s.pre_ttt_bpb is not None else (log.pre_ttt_bpb if log else None),
            })
        return out
    seen: set[tuple[Any, Any]] = set()
    for i, log in enumerate(logs):
        key = (log.val_bpb, log.artifact_bytes)  # train.log is often a copy of one seed's log
        if log.val_bpb is None or key in seen:
            continue
        seen.add(key)
        out.append({"seed": log.seed if log.seed is not None else i, "source": log.name, "val_bpb": log.val_bpb,
                    "val_loss": log.val_loss, "artifact_bytes": log.artifact_bytes, "steps": log.steps,
                    "train_seconds": log.train_seconds, "eval_seconds": log.eval_seconds, "pre_ttt_bpb": log.pre_ttt_bpb})
    if not out and record.val_bpb is not None:  # neither per-seed JSON nor a readable log: the stated mean
        out.append({"seed": 0, "source": "submission.json (mean only)", "val_bpb": record.val_bpb, "val_loss": record.val_loss,
                    "artifact_bytes": record.artifact_bytes})
    return out


def record_verdict(record: pr.PublicRecord) -> Verdict:
    return overall(c for log in record.logs if pr.is_record_log(record, log) for c in pr.check_record_log(record, log))


def import_records(session: Session, records: Iterable[pr.PublicRecord]) -> tuple[int, int]:
    """Insert or update one row per (track, folder); returns (created, updated). The caller commits."""
    existing = {(r.track, r.folder): r for r in session.scalars(select(PublicRecord))}
    created = updated = 0
    for rec in records:
        values = dict(date=rec.date, name=rec.name[:300], author=rec.author[:200], val_bpb=rec.val_bpb,
                      hardware=(rec.hardware or None) and rec.hardware[:100], pytorch_version=rec.pytorch_version and rec.pytorch_version[:50],
                      code_sha256=rec.code_sha256, seeds=record_seeds(rec), verdict=record_verdict(rec).value)
        row = existing.get((rec.track, rec.folder))
        if row is None:
            session.add(PublicRecord(track=rec.track, folder=rec.folder[:200], **values))
            created += 1
        else:
            for k, v in values.items():
                setattr(row, k, v)
            updated += 1
    session.flush()
    return created, updated


def seed_rows(row: PublicRecord) -> list[SeedRow]:
    return [SeedRow(run_id=0, seed=int(s["seed"]), status=RunStatus.SUCCEEDED.value, val_bpb=s.get("val_bpb"), val_loss=s.get("val_loss"),
                    pre_ttt_bpb=s.get("pre_ttt_bpb"), artifact_bytes=s.get("artifact_bytes"), train_seconds=s.get("train_seconds"),
                    eval_seconds=s.get("eval_seconds"), steps=s.get("steps"))
            for s in row.seeds if s.get("val_bpb") is not None]


def record_group(row: PublicRecord) -> RunGroup:
    """A transient, read-only group standing for the record (never added to a session)."""
    group = RunGroup(key=f"{RECORD_PREFIX}{row.folder}", team_id=0, name=f"{row.name} (public record, {row.date})",
                     track=row.track, hardware=RECORD_HARDWARE, kind=RECORD_KIND, config={}, allow_noncompliant=False,
                     created_at=row.imported_at, published_at=row.imported_at)
    group.team = Team(id=0, name=PUBLIC_TEAM)
    return group


def record_views(session: Session, track: str | None = None) -> list[Any]:
    """Every stored record of ``track`` (all tracks: None) as a GroupView, best first."""
    query = select(PublicRecord)
    if track:
        query = query.where(PublicRecord.track == track)
    views = [GroupView(record_group(r), aggregate(seed_rows(r)), ()) for r in session.scalars(query)]
    views = [v for v in views if v.stats.n > 0]
    return sorted(views, key=lambda v: (v.stats.val_bpb.mean, v.group.key))


def record_view(session: Session, ref: str) -> Any:
    """``record:<folder>`` as a GroupView; NotFound naming the folder."""
    folder = ref.removeprefix(RECORD_PREFIX)
    row = session.scalar(select(PublicRecord).where(PublicRecord.folder == folder))
    if row is None:
        raise NotFound("public record (import them with `caddie records import PATH`)", folder)
    return GroupView(record_group(row), aggregate(seed_rows(row)), ())


def frontier(session: Session, track: str, exclude_failed: bool = True) -> Any:
    """The current public record of ``track``: the lowest mean val_bpb among stored records that
    caddie's rules do not fail; None when none is stored."""
    rows = {r.folder for r in session.scalars(select(PublicRecord).where(PublicRecord.track == track))
            if not (exclude_failed and r.verdict == Verdict.FAIL.value)}
    return next((v for v in record_views(session, track) if v.group.key.removeprefix(RECORD_PREFIX) in rows), None)


def is_record_ref(key: str | None) -> bool:
    return bool(key) and str(key).startswith(RECORD_PREFIX)
