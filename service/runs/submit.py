"""Submitting runs: one QUEUED run per seed of a spec, in its group, after the size,
quota and idempotency checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, exists, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.billing import quotas, storage
from service.core.errors import Conflict, InvalidInput, Issue
from service.core.models import SCRIPT_KIND, TRAINER_KIND, Run, RunGroup, Team, utcnow
from service.core.settings import Settings
from service.core.status import RunStatus
from service.runs import size_check
from service.runs.lifecycle import record_created
from service.runs.queries import run_query, with_names
from service.runs.schemas import RunCreate
from service.runs.scripts.files import store_blobs
from service.runs.spec import NormalisedSpec, normalise_spec
from service.teams.tokens import Principal
from trainer.config import TrainerConfig


@dataclass(frozen=True)
class _TeamFacts:
    team: Team
    latest_success: tuple[Any, ...]  # the size check's key (size_check.measured_as_of)
    stored_bytes: int  # the quota's figure (storage.stored_bytes)
    key_used: bool  # the caller already submitted with this Idempotency-Key (a retry)


# The submitting team, what the size check and the storage quota read of it, and whether the caller's
# Idempotency-Key was used before, in one query (they were three more round trips on every submit),
# built once with bound values. No key binds NULL, which matches no run.
_KEY_USED = exists().where(Run.user_id == bindparam("user_id"), Run.idempotency_key == bindparam("idempotency_key"))
_TEAM_FACTS = select(Team, *size_check.latest_success_of(Team.id), storage.stored_bytes_of(Team.id).label("stored_bytes"), _KEY_USED.label("key_used"))
_TEAM_BY_ID = _TEAM_FACTS.where(Team.id == bindparam("team_id"))
_TEAM_BY_NAME = _TEAM_FACTS.where(Team.name == bindparam("name"))


def _team_facts(session: Session, principal: Principal, name: str | None, idempotency_key: str | None = None) -> _TeamFacts:
    keyed = {"user_id": principal.user_id, "idempotency_key": idempotency_key or None}
    if name is None:
        if len(principal.roles) == 1:
            row = session.execute(_TEAM_BY_ID, {"team_id": next(iter(principal.roles)), **keyed}).one()
            return _TeamFacts(row[0], tuple(row[1:4]), int(row.stored_bytes or 0), bool(row.key_used))
        if not principal.roles:
            raise InvalidInput([Issue(("team",), "you belong to no team; ask an admin to add you to one", None)])
        names = ", ".join(sorted(principal.team_names.values()))
        raise InvalidInput([Issue(("team",), f"you belong to several teams ({names}); name one", None)])
    found = session.execute(_TEAM_BY_NAME, {"name": name, **keyed}).first()
    if found is None or not principal.can_see_team(found[0].id):
        raise InvalidInput([Issue(("team",), "no such team among yours", name)])
    return _TeamFacts(found[0], tuple(found[1:4]), int(found.stored_bytes or 0), bool(found.key_used))


def _team_for(session: Session, principal: Principal, name: str | None) -> Team:
    return _team_facts(session, principal, name).team


def submit_runs(
    session: Session,
    principal: Principal,
    spec: RunCreate,
    settings: Settings,
    *,
    idempotency_key: str | None = None,
) -> tuple[str, list[Run], bool]:
    """Create one QUEUED run per seed, all with one group key, and commit.

    Returns (group_key, runs, replayed). With an ``idempotency_key`` a retry
    (even a concurrent one) returns the runs of the first request instead of
    making new ones: the unique constraint (user_id, idempotency_key, seed)
    lets only one insert win. Reusing a key for a different spec is a Conflict.
    """
    normal, seeds = normalise_spec(spec, settings)
    if idempotency_key and len(idempotency_key) > 200:
        raise InvalidInput([Issue(("header", "Idempotency-Key"), "at most 200 characters", len(idempotency_key))])
    facts = _team_facts(session, principal, spec.team, idempotency_key)
    team = facts.team
    group_key = normal.group_key(team.id)
    if idempotency_key and facts.key_used:
        earlier = _by_idempotency_key(session, principal.user_id, idempotency_key)
        if earlier:
            return group_key, _replay(earlier, group_key, seeds), True
    if normal.kind == TRAINER_KIND and normal.track == size_check.SIZE_CHECKED_TRACK and not normal.allow_noncompliant:
        _refuse_oversized(session, team.id, normal.trainer or TrainerConfig(), facts.latest_success)
    incoming = sum(len(b) for b in normal.blobs.values())
    quotas.check_storage_quota(session, team.id, team.name, incoming, settings.team_storage_quota_bytes, used=facts.stored_bytes)
    now = utcnow()
    store_blobs(session, normal.blobs)
    ensure_group(session, group_key, team.id, spec.name, normal, now)
    if normal.kind == SCRIPT_KIND:
        storage.name_script_files(session, team.id, normal.config)  # what the quota sums for the team's scripts
    runs = [
        Run(
            team_id=team.id,
            user_id=principal.user_id,
            name=spec.name,
            notes=spec.notes,
            kind=normal.kind,
            spec=normal.config,
            seed=seed,
            group_key=group_key,
            track=normal.track,
            hardware=normal.hardware,
            allow_noncompliant=normal.allow_noncompliant,
            abort_if_behind=spec.abort_if_behind.model_dump() if spec.abort_if_behind else None,
            priority=settings.default_priority if spec.priority is None else spec.priority,
            status=RunStatus.QUEUED.value,
            status_reason="",
            attempts=0,
            idempotency_key=idempotency_key or None,
            submitted_at=now,
            log_bytes=0,
        )
        for seed in seeds
    ]
    session.add_all(runs)
    try:
        session.flush()
        for run in runs:
            record_created(session, run, actor=principal.actor)
        # Read back with their names inside the transaction: after the commit it would open another
        # (BEGIN, the read, ROLLBACK at close: two round trips more). The session keeps them loaded.
        created = with_names(session, [r.id for r in runs])
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = _by_idempotency_key(session, principal.user_id, idempotency_key) if idempotency_key else []
        if not earlier:
            raise
        return group_key, _replay(earlier, group_key, seeds), True
    return group_key, created, False


def _refuse_oversized(session: Session, team_id: int, cfg: TrainerConfig, latest_success: tuple[Any, ...]) -> None:
    """The pre-flight size check (service.runs.size_check): refuse a config whose artifact cannot fit, saying by how much."""
    ratios, code_sizes = size_check.measured_as_of(session, team_id, latest_success)
    estimate = size_check.estimate(cfg, ratios, code_sizes)
    problem = estimate.problem()
    if problem:
        raise InvalidInput([Issue(("config",), f"{problem}; make the model smaller, or set allow_noncompliant: true to run it anyway "
                                               "(its results will not count for the track)", estimate.total_bytes)])  # fmt: skip


# Built once per dialect, the values bound at execution: every submit runs it.
_GROUP_INSERT = {name: insert(RunGroup).on_conflict_do_nothing(index_elements=["key"]) for name, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))}


def ensure_group(session: Session, key: str, team_id: int, name: str, normal: NormalisedSpec, now: datetime) -> None:
    """Insert the group row unless it exists; concurrent first submissions both succeed."""
    values = dict(key=key, team_id=team_id, name=name, track=normal.track, hardware=normal.hardware, kind=normal.kind,
                  config=normal.config, allow_noncompliant=normal.allow_noncompliant, created_at=now)
    # On the session's connection, not session.execute: the ORM would wrap the dialect's insert in a class
    # SQLAlchemy does not cache (SAWarning "AnnotatedInsert ... compilation caching"), compiling it on every submit.
    session.connection().execute(_GROUP_INSERT[session.get_bind().dialect.name], values)


# Built once with bound values: SQLAlchemy reuses its cache key and compiled form (every keyed submit asks).
_BY_IDEMPOTENCY_KEY = run_query().where(Run.user_id == bindparam("user_id"), Run.idempotency_key == bindparam("key")).order_by(Run.id)


def _by_idempotency_key(session: Session, user_id: int, key: str) -> list[Run]:
    return list(session.scalars(_BY_IDEMPOTENCY_KEY, {"user_id": user_id, "key": key}))


def _replay(earlier: list[Run], group_key: str, seeds: list[int]) -> list[Run]:
    if earlier[0].group_key != group_key or sorted(r.seed for r in earlier) != sorted(seeds):
        raise Conflict("this Idempotency-Key was already used for a different spec")
    return earlier
