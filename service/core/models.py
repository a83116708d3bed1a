"""The service's tables (SQLAlchemy 2, typed).

All datetimes are timezone-aware UTC (SQLite stores them naive; ``UTCDateTime``
puts the zone back on load). JSON columns use the generic ``JSON`` type, which
is ``json`` on PostgreSQL and text on SQLite.

Free text (run names, notes) is stored verbatim and is never interpolated into
a shell command: the worker hands a run's config to the trainer only through
environment variables / a JSON file built from ``Run.spec``.
"""

from __future__ import annotations

import builtins
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so migrations (and SQLite batch rebuilds) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# What a run runs (runs.kind, run_groups.kind): the shared trainer, or a team's own train_gpt.py
# (service/runs/scripts). Billing, results and the worker tell them apart by these.
TRAINER_KIND = "trainer"
SCRIPT_KIND = "script"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        value = value.astimezone(timezone.utc)
        # SQLite has no zone type: store naive UTC text that sorts correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[dict[str, Any]]: JSON()}


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    budget_gpu_hours: Mapped[float | None] = mapped_column(Float)
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where the team's notifications go (service.webhooks); null: none. Checked when set
    # (http/https, no private address unless CADDIE_WEBHOOK_ALLOW_PRIVATE) and again when sent.
    webhook_url: Mapped[str | None] = mapped_column(Text)

    memberships: Mapped[list[Membership]] = relationship(back_populates="team", cascade="all, delete-orphan", passive_deletes=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan", passive_deletes=True)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "team_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16), default="member")  # 'member' | 'admin'

    user: Mapped[User] = relationship(back_populates="memberships")
    team: Mapped[Team] = relationship(back_populates="memberships")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the token itself is never stored
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell tokens apart in listings
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Set only on a web sign-in's session token (CADDIE_WEB_SESSION_DAYS): it signs in no more
    # after it, and the janitor deletes it. API tokens have none and never expire.
    expires_at: Mapped[datetime | None] = mapped_column(index=True)

    user: Mapped[User] = relationship()


class Cluster(Base):
    __tablename__ = "clusters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    launcher: Mapped[str] = mapped_column(String(32))
    hardware: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), index=True)
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    idle_since: Mapped[datetime | None]
    # Plain integer, no foreign key: runs already reference clusters, and a
    # cycle of foreign keys would complicate every migration for little gain.
    owner_run_id: Mapped[int | None] = mapped_column(Integer)


class Run(Base):
    """One training run: a spec plus one seed, and everything learnt about it.

    ``name`` and ``notes`` are user free text, stored verbatim. They never reach
    a shell: the worker passes the run's configuration to the trainer only as
    environment variables / JSON derived from ``spec``, never as a command string.
    """

    __tablename__ = "runs"
    __table_args__ = (
        # Idempotent submission: a retried POST with the same key finds these rows.
        UniqueConstraint("user_id", "idempotency_key", "seed", name="uq_runs_user_id_idempotency_key_seed"),
        # Keyset pagination (id desc) under each filter the list endpoint offers.
        Index("ix_runs_team_id_id", "team_id", "id"),
        Index("ix_runs_user_id_id", "user_id", "id"),
        Index("ix_runs_status_id", "status", "id"),
        Index("ix_runs_group_key_id", "group_key", "id"),
        Index("ix_runs_team_id_status_id", "team_id", "status", "id"),
        # Which hardware the queue asks for, in one index probe per kind (worker.control.dispatch).
        Index("ix_runs_status_hardware", "status", "hardware"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200))
    notes: Mapped[str] = mapped_column(Text, default="")
    # What runs: "trainer" (the shared trainer; spec holds its normalised knob overrides keyed by
    # env name) or "script" (a team's own train_gpt.py; spec holds service.runs.scripts.ScriptSpec's JSON).
    kind: Mapped[str] = mapped_column(String(16), default=TRAINER_KIND, server_default=TRAINER_KIND)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    group_key: Mapped[str] = mapped_column(String(64))
    track: Mapped[str] = mapped_column(String(32))
    hardware: Mapped[str] = mapped_column(String(32))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="QUEUED")  # a service.core.status.RunStatus value
    status_reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    # Set by POST /runs/{id}/cancel while the run is PROVISIONING or RUNNING;
    # the worker sees it, stops the job and makes the final transition.
    cancel_requested_at: Mapped[datetime | None]
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id", ondelete="SET NULL"))
    launch_handle: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker_task_id: Mapped[str | None] = mapped_column(String(200))

    val_bpb: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    pre_ttt_bpb: Mapped[float | None] = mapped_column(Float)
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger)
    model_bytes: Mapped[int | None] = mapped_column(BigInteger)
    code_bytes: Mapped[int | None] = mapped_column(BigInteger)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    eval_seconds: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int | None] = mapped_column(Integer)
    peak_memory_mib: Mapped[float | None] = mapped_column(Float)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The spec opted out of the track's rules (e.g. no wallclock cap): accepted,
    # but its runs are never a pass and never record-eligible.
    allow_noncompliant: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # service.results.rules.check_run's output ([{rule, verdict, reason, figure, limit}])
    # and its overall verdict; written with the result, in the same transaction.
    checks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    checks_verdict: Mapped[str | None] = mapped_column(String(16))
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Where storing the log stopped (it passed CADDIE_LOG_MAX_BYTES); null: all of it is stored.
    log_truncated_at: Mapped[int | None] = mapped_column(BigInteger)
    # Opt-in early abort ({"step": N, "margin": M}, service.runs.early_abort); null: none.
    abort_if_behind: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Node seconds an early abort saved: the run's expected time minus what it used (ABORTED_BEHIND only).
    saved_seconds: Mapped[float | None] = mapped_column(Float)
    # The latest attempt that got running started on a reused (kept-warm) cluster (True) or a
    # freshly provisioned one (False); written with its PROVISIONING -> RUNNING; null: not yet.
    warm_start: Mapped[bool | None] = mapped_column(Boolean)
    # What the latest attempt's node reported at launch (service.core.hardware.NodeHardware:
    # gpu_name, gpus, source, hardware): the rules judge and billing bills it, not the spec's.
    node_hardware: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the latest attempt's Python held, read by its launcher from inside it after the job
    # (service.runs.scripts.environment's report: python, torch, cuda, flash_attn, packages).
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    team: Mapped[Team] = relationship()
    user: Mapped[User] = relationship()
    cluster: Mapped[Cluster | None] = relationship()


class RunGroup(Base):
    """One team's runs of one normalised config on one track and hardware (seeds vary).

    Made on the first submission of its key; the runs point to it by ``group_key``.
    ``published_at`` set: every team sees it on the leaderboard.
    """

    __tablename__ = "run_groups"
    __table_args__ = (Index("ix_run_groups_track_hardware", "track", "hardware"),)

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))  # the name of the first submission
    track: Mapped[str] = mapped_column(String(32))
    hardware: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16), default=TRAINER_KIND, server_default=TRAINER_KIND)  # as its runs'
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # its runs' spec: knobs keyed by env name, or a script's
    allow_noncompliant: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]
    published_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # Moved by triggers on runs (migration 0015) in every transaction that adds, removes or changes
    # what the group's statistics read; the per-process statistics cache checks it. Never set here.
    stats_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    team: Mapped[Team] = relationship()


class ScriptFile(Base):
    """One file of script runs (a train_gpt.py, a helper module, a tokenizer model), stored once by content.

    In the database rather than the artifact store: it is written in one transaction
    with the runs that name it (a refused spec leaves nothing behind), and every
    worker can read it without a shared disk. Files are small (CADDIE_MAX_SCRIPT_*).
    """

    __tablename__ = "script_files"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex digest of content
    bytes: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[builtins.bytes] = mapped_column(LargeBinary)  # builtins: `bytes` above names the column
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TeamStorage(Base):
    """Bytes a team's runs hold in artifacts and stored logs, kept up to date by the writers of
    those bytes in the transaction that writes them (service.billing.storage): the storage quota
    reads this one row instead of summing the team's history. The janitor recounts each team now
    and then (``recounted_at``) and repairs a figure that drifted (a hand edit, a missed writer)."""

    __tablename__ = "team_storage"

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    recounted_at: Mapped[datetime | None]


class TeamScriptFile(Base):
    """A script file (by sha256) that one of the team's script run groups names, written at submit:
    the quota sums the team's script files over these rows, not over every group's config. No
    foreign key to script_files: retention may delete a file that a later upload stores again."""

    __tablename__ = "team_script_files"

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)


class RunEvent(Base):
    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_id_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))  # 'train' | 'val'
    step: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_bpb: Mapped[float | None] = mapped_column(Float)
    elapsed_ms: Mapped[float | None] = mapped_column(Float)
    # Which launch of the run wrote it (1, 2, ...): a requeued run keeps its earlier attempts' points.
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class LogChunk(Base):
    __tablename__ = "log_chunks"
    __table_args__ = (UniqueConstraint("run_id", "offset"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    offset: Mapped[int] = mapped_column(BigInteger)  # byte offset of data[0] in the UTF-8 log
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Which launch of the run wrote it (1, 2, ...): offsets run on across attempts, one log per run.
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # 'model' | 'log' | 'result' | 'metrics'
    uri: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PublicRecord(Base):
    """One record of the challenge's public leaderboard (a folder of its records/), imported by
    ``caddie records import``: the frontier teams compare against. ``seeds`` holds each seed's
    figures ({seed, val_bpb, val_loss, artifact_bytes, steps, train_seconds, eval_seconds,
    pre_ttt_bpb, source}: the log's where it says, else submission.json's)."""

    __tablename__ = "public_records"
    __table_args__ = (UniqueConstraint("track", "folder", name="uq_public_records_track_folder"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    track: Mapped[str] = mapped_column(String(32))
    folder: Mapped[str] = mapped_column(String(200))
    date: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(300))
    author: Mapped[str] = mapped_column(String(200), default="")
    val_bpb: Mapped[float | None] = mapped_column(Float)  # as the record states it
    hardware: Mapped[str | None] = mapped_column(String(100))
    pytorch_version: Mapped[str | None] = mapped_column(String(50))
    code_sha256: Mapped[str | None] = mapped_column(String(64))
    seeds: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    verdict: Mapped[str] = mapped_column(String(16))  # caddie's rules over its logs: pass, fail, not_comparable
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoredQueueEstimate(Base):
    """One queued run's place in the latest queue forecast, written by the control worker
    (worker/control/forecast.py) for every API replica to read (service/queue/stored.py).
    A forecast is written in one transaction (only the rows that changed); its time is the
    marker row's ``made_at``. A run submitted or requeued since has no row until the next one.
    No foreign key: a run deleted between two forecasts must not fail the write."""

    __tablename__ = "queue_estimates"
    # GET /queue reads a page as ``limit`` index rows after a cursor (rank; a member's: its team's).
    __table_args__ = (Index("ix_queue_estimates_rank", "rank"), Index("ix_queue_estimates_team_id_rank", "team_id", "rank"))

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    position: Mapped[int | None] = mapped_column(Integer)
    estimated_start_at: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(Text)
    made_at: Mapped[datetime]
    # The run's place in GET /queue's order over every team (start, position, id), 1 first; NULL on the marker.
    rank: Mapped[int | None] = mapped_column(Integer)
    team_id: Mapped[int | None] = mapped_column(Integer)  # the run's team, so a member's page reads only its rows


class Sweep(Base):
    """A search over trainer knobs (service.sweeps): a base config, a space, a strategy and limits.

    ``spec`` holds the normalised sweep (base, space, strategy, seeds, limits, prune rule);
    each trial is a run group submitted through the ordinary submission path.
    """

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_team_id_id", "team_id", "id"), Index("ix_sweeps_status", "status"))

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))  # its trials are submitted, and cancelled, as this user
    name: Mapped[str] = mapped_column(String(200))
    notes: Mapped[str] = mapped_column(Text, default="")
    track: Mapped[str] = mapped_column(String(32))
    hardware: Mapped[str] = mapped_column(String(32))
    strategy: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # running | stopped | done
    status_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    team: Mapped[Team] = relationship()
    user: Mapped[User] = relationship()


class SweepTrial(Base):
    """One point of a sweep: its knob values and the runs (one per seed) that measure it."""

    __tablename__ = "sweep_trials"
    __table_args__ = (UniqueConstraint("sweep_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... within its sweep
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    group_key: Mapped[str | None] = mapped_column(String(64))
    run_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16))  # pending | running | complete | failed | pruned | stopped
    value: Mapped[float | None] = mapped_column(Float)  # mean val_bpb of its SUCCEEDED runs; pruned: the predicted one
    reason: Mapped[str] = mapped_column(Text, default="")
    prune: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # a pruned trial's figures (service.sweeps.plan.PruneVerdict)
    gpu_hours: Mapped[float | None] = mapped_column(Float)  # used by its runs, once it ended
    saved_gpu_hours: Mapped[float | None] = mapped_column(Float)  # a pruned trial's: what its runs would still have used
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One notification waiting for (or done with) its POST to the team's webhook (service.webhooks).

    Written in the transaction of the event it tells of (a run's final transition, a sweep's end),
    sent later by the control worker's webhook tick, so a slow or dead endpoint never holds a run.
    The URL is read from the team when sent: a delivery goes only to its own team's webhook.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))  # run.succeeded, group.record_eligible, sweep.finished, ...
    # Once-only events (a group becoming record-eligible) carry a key; a second one is not queued.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    # The last try's host (never the URL's path: the endpoint's secret) and HTTP status (None: no answer).
    host: Mapped[str | None] = mapped_column(String(255))
    status_code: Mapped[int | None]
