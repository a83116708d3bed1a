"""Runs, the domain side (no HTTP): submit a spec, list, read, cancel, and read
a run's events, metrics and log.

Visibility rule used everywhere here: a run belongs to its team; only members
of that team and global admins can see it. To everyone else it does not exist
(``NotFound``), so run ids leak nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from service.errors import Conflict, Forbidden, InvalidInput, Issue, NotFound
from service.lifecycle import RunStatus, IllegalTransition, is_terminal, record_created, transition
from service.models import LogChunk, Metric, Run, RunEvent, RunGroup, Team, User, utcnow
from service import quotas, size_check
from service.early_abort import unlogged_step
from service.results.rules import spec_noncompliance
from service.schemas import ID_MAX, QUEUE_FIELDS, RunCreate, RunOut
from service.scripts.files import store_blobs
from service.scripts.spec import SCRIPT_KIND, ScriptLimits, check_script_spec
from service.security import Principal
from service.settings import Settings
from trainer.config import ConfigError, TrainerConfig

# Knobs a spec may not set: the seed comes from ``seeds``/``seed`` (it is what
# varies inside a group); the output folder, the data and the tokenizer are the
# worker's, found from the run's data variant (sp<VOCAB_SIZE>) under its data root.
_FROM_VARIANT = "set by caddie from the data variant, sp<VOCAB_SIZE> (choose the data with VOCAB_SIZE, e.g. 1024 for sp1024); a spec never names a path"
RESERVED_KNOBS = {
    "SEED": "set the seed with seeds/seed, not in config",
    "OUTPUT_DIR": "chosen by the worker",
    "DATA_PATH": _FROM_VARIANT,
    "TOKENIZER_PATH": _FROM_VARIANT,
}
DEFAULT_SEED = 1337
LOG_PAGE_BYTES = 1 << 20


# --- normalising a spec ------------------------------------------------------------
@dataclass(frozen=True)
class NormalisedSpec:
    config: dict[str, Any]  # non-default knobs keyed by env name, sorted; a script run's ScriptSpec JSON
    track: str
    hardware: str
    allow_noncompliant: bool = False
    kind: str = "trainer"  # or "script"
    blobs: dict[str, bytes] = field(default_factory=dict)  # a script run's files by sha256, to store

    def group_key(self, team_id: int) -> str:
        """sha256 hex of the canonical JSON of (team, config, track, hardware, opt-out):
        one team's runs that differ only in seed (or name, notes) share it."""
        return group_key_of(team_id, self.config, self.track, self.hardware, self.allow_noncompliant)


def group_key_of(team_id: int, config: dict[str, Any], track: str, hardware: str, allow_noncompliant: bool) -> str:
    canonical = json.dumps(
        {"allow_noncompliant": allow_noncompliant, "config": config, "hardware": hardware, "team": team_id, "track": track},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate overrides with the trainer's own rules and return them canonical:
    keyed by env name, coerced to the knob's type, defaults dropped, sorted.

    Raises InvalidInput with one issue per bad knob at ``("config", ENV_NAME)``.
    """
    issues = [Issue(("config", key), msg, config[key]) for key, msg in _reserved(config)]
    unstorable = [Issue(("config", key), msg, value) for key, value in config.items() if (msg := _unstorable(value))]
    if unstorable:
        raise InvalidInput(issues + unstorable)
    try:
        cfg = TrainerConfig.from_dict(config)
    except ConfigError as exc:
        issues += [Issue(("config", i.field), i.message, _jsonable(i.value)) for i in exc.issues]
    if issues:
        raise InvalidInput(issues)
    return dict(sorted(cfg.overrides().items()))


def _reserved(config: dict[str, Any]) -> list[tuple[str, str]]:
    names = {f.name: TrainerConfig.env_name(f) for f in TrainerConfig.knobs()}
    return [(key, RESERVED_KNOBS[names.get(key, key)]) for key in config if names.get(key, key) in RESERVED_KNOBS]


def _unstorable(value: Any) -> str | None:
    """Why a knob's text cannot be stored (PostgreSQL holds neither NUL nor a lone surrogate), or None."""
    if not isinstance(value, str):
        return None
    if "\x00" in value:
        return "must not contain NUL (\\x00) characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (found a lone surrogate)"
    return None


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def normalise_spec(spec: RunCreate, settings: Settings) -> tuple[NormalisedSpec, list[int]]:
    """Check everything about a spec that pydantic cannot (limits from settings,
    the trainer's config rules); return the normal form and the seeds."""
    issues: list[Issue] = []
    if spec.track not in settings.track_choices:
        issues.append(Issue(("track",), f"must be one of {', '.join(settings.track_choices)}", spec.track))
    if spec.hardware not in settings.hardware_choices:
        issues.append(Issue(("hardware",), f"must be one of {', '.join(settings.hardware_choices)}", spec.hardware))
    if spec.priority is not None and not settings.min_priority <= spec.priority <= settings.max_priority:
        issues.append(Issue(("priority",), f"must be >= {settings.min_priority} and <= {settings.max_priority}", spec.priority))
    seeds = _seeds(spec, settings, issues)
    if _is_script(spec):
        return _normalise_script(spec, settings, issues), seeds
    try:
        config = normalise_config(spec.config)
    except InvalidInput as exc:
        issues += exc.issues
        config = {}
    else:
        variant = f"sp{config.get('VOCAB_SIZE', TrainerConfig.vocab_size)}"
        if variant not in settings.data_variant_choices:
            sizes = ", ".join(v.removeprefix("sp") for v in settings.data_variant_choices)
            issues.append(Issue(("config", "VOCAB_SIZE"), f"no data variant {variant} here: VOCAB_SIZE must be one of {sizes} "
                                f"(data variants {', '.join(settings.data_variant_choices)})", config.get("VOCAB_SIZE")))  # fmt: skip
        if spec.abort_if_behind is not None:
            issues += unlogged_step(config, spec.abort_if_behind.step)
    if not issues and not spec.allow_noncompliant:
        issues += [
            Issue(("config", p.knob), f"{p.reason}; set allow_noncompliant: true to run it anyway (its results will not count for the track)", p.value)
            for p in spec_noncompliance(config, spec.track)
        ]
    if issues:
        raise InvalidInput(issues)
    return NormalisedSpec(config=config, track=spec.track, hardware=spec.hardware, allow_noncompliant=spec.allow_noncompliant), seeds


def _is_script(spec: RunCreate) -> bool:
    """A spec that names a script, or any of a script run's fields (which then must name one)."""
    return spec.script is not None or bool(spec.files) or bool(spec.env) or spec.data is not None or spec.score_label is not None or bool(spec.public_env)


def _normalise_script(spec: RunCreate, settings: Settings, issues: list[Issue]) -> NormalisedSpec:
    """A team's own train_gpt.py: its files by sha256, its env and data variant (service.scripts.spec)."""
    if spec.config:
        issues.append(Issue(("config",), "a script run takes env, not config (config holds the shared trainer's knobs)", sorted(spec.config)))
    limits = ScriptLimits(
        file_bytes=settings.max_script_file_bytes, total_bytes=settings.max_script_total_bytes, files=settings.max_script_files,
        env_vars=settings.max_script_env_vars, env_value_chars=settings.max_script_env_value_chars, variants=settings.data_variant_choices,
    )  # fmt: skip
    try:
        script, blobs = check_script_spec(spec.script, [(f.name, f.content) for f in spec.files], spec.env, spec.data, limits,
                                          score_label=spec.score_label, public_env=spec.public_env)
    except InvalidInput as exc:
        raise InvalidInput(issues + exc.issues) from None
    if issues:
        raise InvalidInput(issues)
    return NormalisedSpec(config=script.to_json(), track=spec.track, hardware=spec.hardware,
                          allow_noncompliant=spec.allow_noncompliant, kind=SCRIPT_KIND, blobs=blobs)


def _seeds(spec: RunCreate, settings: Settings, issues: list[Issue]) -> list[int]:
    if spec.seeds is not None and spec.seed is not None:
        issues.append(Issue(("seed",), "give seeds or seed, not both", spec.seed))
        return []
    if spec.seeds is None:
        return [DEFAULT_SEED if spec.seed is None else spec.seed]
    seeds = spec.seeds
    if not seeds:
        issues.append(Issue(("seeds",), "must hold at least 1 seed", seeds))
    if len(seeds) > settings.max_seeds:
        issues.append(Issue(("seeds",), f"at most {settings.max_seeds} seeds per submission, got {len(seeds)}", len(seeds)))
    duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
    if duplicates:
        issues.append(Issue(("seeds",), f"seeds must be unique; repeated: {', '.join(map(str, duplicates))}", duplicates))
    return list(seeds)


# --- submitting ----------------------------------------------------------------------
def _team_for(session: Session, principal: Principal, name: str | None) -> Team:
    if name is None:
        if len(principal.roles) == 1:
            return session.get_one(Team, next(iter(principal.roles)))
        if not principal.roles:
            raise InvalidInput([Issue(("team",), "you belong to no team; ask an admin to add you to one", None)])
        names = ", ".join(sorted(principal.team_names.values()))
        raise InvalidInput([Issue(("team",), f"you belong to several teams ({names}); name one", None)])
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None or not principal.can_see_team(team.id):
        raise InvalidInput([Issue(("team",), "no such team among yours", name)])
    return team


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
    team = _team_for(session, principal, spec.team)
    group_key = normal.group_key(team.id)
    if idempotency_key:
        if len(idempotency_key) > 200:
            raise InvalidInput([Issue(("header", "Idempotency-Key"), "at most 200 characters", len(idempotency_key))])
        earlier = _by_idempotency_key(session, principal.user_id, idempotency_key)
        if earlier:
            return group_key, _replay(earlier, group_key, seeds), True
    if normal.kind == "trainer" and normal.track == size_check.SIZE_CHECKED_TRACK and not normal.allow_noncompliant:
        _refuse_oversized(session, team.id, normal.config)
    quotas.check_storage_quota(session, team.id, team.name, sum(len(b) for b in normal.blobs.values()), settings.team_storage_quota_bytes)
    now = utcnow()
    store_blobs(session, normal.blobs)
    ensure_group(session, group_key, team.id, spec.name, normal, now)
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
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = _by_idempotency_key(session, principal.user_id, idempotency_key) if idempotency_key else []
        if not earlier:
            raise
        return group_key, _replay(earlier, group_key, seeds), True
    return group_key, _with_names(session, [r.id for r in runs]), False


def _refuse_oversized(session: Session, team_id: int, config: dict[str, Any]) -> None:
    """The pre-flight size check (service.size_check): refuse a config whose artifact cannot fit, saying by how much."""
    ratios, code_sizes = size_check.measured(session, team_id)
    estimate = size_check.estimate(TrainerConfig.from_dict(config), ratios, code_sizes)
    problem = estimate.problem()
    if problem:
        raise InvalidInput([Issue(("config",), f"{problem}; make the model smaller, or set allow_noncompliant: true to run it anyway "
                                               "(its results will not count for the track)", estimate.total_bytes)])  # fmt: skip


def ensure_group(session: Session, key: str, team_id: int, name: str, normal: NormalisedSpec, now: datetime) -> None:
    """Insert the group row unless it exists; concurrent first submissions both succeed."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    values = dict(key=key, team_id=team_id, name=name, track=normal.track, hardware=normal.hardware, kind=normal.kind,
                  config=normal.config, allow_noncompliant=normal.allow_noncompliant, created_at=now)
    session.execute(insert(RunGroup).values(**values).on_conflict_do_nothing(index_elements=["key"]))


def _by_idempotency_key(session: Session, user_id: int, key: str) -> list[Run]:
    query = _run_query().where(Run.user_id == user_id, Run.idempotency_key == key).order_by(Run.id)
    return list(session.scalars(query))


def _replay(earlier: list[Run], group_key: str, seeds: list[int]) -> list[Run]:
    if earlier[0].group_key != group_key or sorted(r.seed for r in earlier) != sorted(seeds):
        raise Conflict("this Idempotency-Key was already used for a different spec")
    return earlier


def _run_query() -> Select[tuple[Run]]:
    # Team and user names come in the same query (no N+1 when serialising).
    return select(Run).options(joinedload(Run.team, innerjoin=True), joinedload(Run.user, innerjoin=True))


def _with_names(session: Session, ids: list[int]) -> list[Run]:
    return list(session.scalars(_run_query().where(Run.id.in_(ids)).order_by(Run.id)))


# --- reading -------------------------------------------------------------------------
def get_run(session: Session, principal: Principal, run_id: int) -> Run:
    run = session.scalar(_run_query().where(Run.id == run_id))
    if run is None or not principal.can_see_team(run.team_id):
        raise NotFound("run", run_id)
    return run


def encode_cursor(run_id: int) -> str:
    return base64.urlsafe_b64encode(f"r{run_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("r"):
            raise ValueError(raw)
        run_id = int(raw[1:])
        # A cursor is an id plus one at most (the web page's live poll): anything else was not ours.
        if not 1 <= run_id <= ID_MAX + 1:
            raise ValueError(raw)
        return run_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput([Issue(("query", "cursor"), "not a cursor from a previous page", cursor)]) from None


def parse_statuses(status: str | None) -> list[str]:
    """``QUEUED,RUNNING`` -> ["QUEUED", "RUNNING"] (case-insensitive)."""
    if not status:
        return []
    out = []
    for part in status.split(","):
        part = part.strip().upper()
        if part not in RunStatus.__members__:
            raise InvalidInput([Issue(("query", "status"), f"must be one of {', '.join(RunStatus.__members__)} (comma-separated)", status)])
        out.append(part)
    return out


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# Columns of a run listing: every Run column the API shows, plus the team and
# user names (one query, no ORM objects: the list endpoint is the hot path).
_LIST_COLUMNS = [Run.__table__.c[name] for name in RunOut.model_fields if name not in ("team", "user", *QUEUE_FIELDS)]


# Built once: statements are immutable, and building one per request costs more
# than running it.
_LIST_QUERY = (
    select(*_LIST_COLUMNS, Team.name.label("team"), User.name.label("user"))
    .join(Team, Team.id == Run.team_id)
    .join(User, User.id == Run.user_id)
)


def list_runs(
    session: Session,
    principal: Principal,
    *,
    status: str | None = None,
    team: str | None = None,
    user: str | None = None,
    group: str | None = None,
    q: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Any], str | None]:
    """Newest first (id descending), one page of ``limit``, keyset-paginated:
    the cursor is the last id of the previous page, so pages never repeat or
    skip a run even while new runs arrive.

    Returns rows that read like runs (``row.id``, ``row.status``, ...) with
    ``row.team`` and ``row.user`` holding the names, and the next cursor.
    """
    query = _LIST_QUERY
    if not principal.is_admin:
        if not principal.roles:
            return [], None
        query = query.where(Run.team_id.in_(sorted(principal.roles)))
    statuses = parse_statuses(status)
    if len(statuses) == 1:
        query = query.where(Run.status == statuses[0])
    elif statuses:
        query = query.where(Run.status.in_(statuses))
    if team:
        query = query.where(Run.team_id == select(Team.id).where(Team.name == team).scalar_subquery())
    if user:
        query = query.where(Run.user_id == select(User.id).where(User.name == user).scalar_subquery())
    if group:
        query = query.where(Run.group_key == group)
    if q:
        pattern = _like_pattern(q)
        query = query.where(or_(Run.name.ilike(pattern, escape="\\"), Run.notes.ilike(pattern, escape="\\")))
    if cursor:
        query = query.where(Run.id < decode_cursor(cursor))
    rows = session.execute(query.order_by(Run.id.desc()).limit(limit + 1)).all()
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def list_events(session: Session, principal: Principal, run_id: int) -> list[RunEvent]:
    _visible(session, principal, run_id)
    return list(session.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))


def list_metrics(session: Session, principal: Principal, run_id: int) -> list[Metric]:
    _visible(session, principal, run_id)
    return list(session.scalars(select(Metric).where(Metric.run_id == run_id).order_by(Metric.step, Metric.id)))


# What charts need of a metric row, read as plain rows: for a run with 20,000
# points this took 150-190 ms against 416 ms for ORM objects (SQLite, a loaded 2-core machine).
_POINT_COLUMNS = (Metric.kind, Metric.step, Metric.train_loss, Metric.val_loss, Metric.val_bpb, Metric.elapsed_ms)


def metric_points(session: Session, principal: Principal, run_id: int) -> list[Any]:
    """The points of the run's latest attempt, as rows with ``list_metrics``' attribute names
    (``row.step``, ``row.val_bpb``, ...): a requeued run's curve starts again at step 1, and
    drawing every attempt on one axis would zigzag (the API's /metrics keeps them all)."""
    _visible(session, principal, run_id)
    latest = select(func.max(Metric.attempt)).where(Metric.run_id == run_id).scalar_subquery()
    query = select(*_POINT_COLUMNS).where(Metric.run_id == run_id, Metric.attempt == latest).order_by(Metric.step, Metric.id)
    return list(session.execute(query))


def _visible(session: Session, principal: Principal, run_id: int) -> tuple[int, str]:
    row = session.execute(select(Run.team_id, Run.status).where(Run.id == run_id)).first()
    if row is None or not principal.can_see_team(row.team_id):
        raise NotFound("run", run_id)
    return row.team_id, row.status


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
    _, status = _visible(session, principal, run_id)
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


# --- cancelling ----------------------------------------------------------------------
def cancel_run(session: Session, principal: Principal, run_id: int) -> Run:
    """Cancel a run and commit. QUEUED runs are cancelled at once; for
    PROVISIONING/RUNNING runs a cancel request is recorded (cancel_requested_at)
    and the worker stops the job and makes the final transition. Finished runs: Conflict."""
    run = get_run(session, principal, run_id)
    # A member cancels their own runs; another member's run needs a team admin (it spends their time and budget).
    if run.user_id != principal.user_id and not principal.can_manage_team(run.team_id):
        raise Forbidden(f"run {run_id} was submitted by another member; only they or an admin of its team may cancel it")
    for _ in range(3):  # the run may move under us (dispatch); look again
        status = RunStatus(run.status)
        if is_terminal(status):
            raise Conflict(f"run {run_id} is already {status.value}")
        if status is RunStatus.QUEUED:
            try:
                transition(session, run, RunStatus.CANCELLED, actor=principal.actor, reason="cancelled by user")
            except IllegalTransition:
                session.rollback()
                session.refresh(run)
                continue
            session.commit()
            return run
        if run.cancel_requested_at is None:
            # Only while the run is still active: it may have finished since we
            # read it, and a finished run must answer Conflict, not a cancel request.
            requested = session.execute(
                update(Run)
                .where(Run.id == run.id, Run.status.in_((RunStatus.PROVISIONING.value, RunStatus.RUNNING.value)))
                .values(cancel_requested_at=utcnow()),
                execution_options={"synchronize_session": False},
            )
            session.commit()
            session.refresh(run)
            if requested.rowcount != 1:
                continue
        return run
    raise Conflict(f"run {run_id} keeps changing state; try again")


def runs_by_ids(session: Session, ids: Sequence[int]) -> list[Run]:
    return _with_names(session, list(ids))
