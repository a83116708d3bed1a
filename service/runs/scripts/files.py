"""Script files in the database, stored once by sha256 (no HTTP; the caller commits).

The same train_gpt.py submitted twice, by one team or two, is one row: rows are
keyed by their content's sha256 and never change, so a second insert is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service.core.models import ScriptFile, utcnow
from service.runs.scripts.spec import SCRIPT_NAME, ScriptSpec


def store_blobs(session: Session, blobs: Mapping[str, bytes]) -> None:
    """Insert each blob unless a row of its sha256 exists (concurrent first uploads both succeed)."""
    if not blobs:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    rows = [dict(sha256=sha, bytes=len(data), content=data, created_at=now) for sha, data in sorted(blobs.items())]
    session.execute(insert(ScriptFile).values(rows).on_conflict_do_nothing(index_elements=["sha256"]))


def load_blobs(session: Session, shas: Iterable[str]) -> dict[str, bytes]:
    """The stored bytes of each sha256 that is stored (a missing one is simply absent)."""
    wanted = sorted(set(shas))
    if not wanted:
        return {}
    return {sha: bytes(content) for sha, content in session.execute(select(ScriptFile.sha256, ScriptFile.content).where(ScriptFile.sha256.in_(wanted)))}


class MissingScriptFile(LookupError):
    """A script run names a file whose bytes are not stored."""


def run_folder_files(session: Session, spec: ScriptSpec) -> dict[str, bytes]:
    """The files of a script run's folder by name, train_gpt.py first; MissingScriptFile naming what is absent."""
    names = {SCRIPT_NAME: spec.script_sha256, **spec.files}
    blobs = load_blobs(session, names.values())
    missing = sorted(name for name, sha in names.items() if sha not in blobs)
    if missing:
        raise MissingScriptFile(f"stored bytes missing for {', '.join(missing)}")
    return {name: blobs[sha] for name, sha in names.items()}
