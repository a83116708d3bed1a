"""Worker settings (pydantic-settings, env prefix CADDIE_).

Paths that are not set explicitly live under CADDIE_HOME (default ./.caddie),
the same home the service uses, so `caddie up` needs no configuration.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from service.queue.settings import SchedulingSettings

# The ceiling over every run's own deadline (worker.run.deadlines): a run asking for long
# training caps still ends within this.
DEFAULT_HARD_TIMEOUT_S = 6 * 3600.0


class WorkerSettings(SchedulingSettings):
    """The worker's settings; the scheduling ones (capacity, budgets, retry backoff, run
    estimates) are inherited from service.queue.settings, shared with the API."""

    model_config = SettingsConfigDict(env_prefix="CADDIE_", extra="ignore")

    home: Path = Path(".caddie")

    # --- broker and the executor's loop --------------------------------------
    broker_url: str = ""  # default: a SQLite-backed kombu broker under home (needs no server)
    heartbeat_s: float = Field(5.0, gt=0)
    hard_timeout_s: float = Field(DEFAULT_HARD_TIMEOUT_S, gt=0)
    # A run's deadline: its training cap + eval_cap_s + deadline_overhead_s (worker.run.deadlines).
    eval_cap_s: float = Field(600.0, ge=0)
    deadline_overhead_s: float = Field(300.0, ge=0)
    # The silence watchdog: a job whose log grew by nothing for this long is stopped (0: off).
    silence_timeout_s: float = Field(600.0, ge=0)
    # Train-loss points kept per run attempt: past it the curve is thinned to every 2nd, 4th, ... step.
    max_train_points: int = Field(10_000, ge=100)
    # Bytes of a run's log stored (all attempts): past it the rest is read for metrics and
    # figures but not stored, and the run says where its log was cut (0: no cap).
    log_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    # Days after a run ended that its artifacts, run folder and (unshared) script files are kept (0: for ever).
    retention_days: float = Field(30.0, ge=0)
    # How often the executor polls the job (status, log, cancel request); the
    # trainer-exit -> SUCCEEDED delay is about one poll.
    poll_interval_s: float = Field(0.2, gt=0, le=30)
    # A run whose heartbeat is older than this many heartbeats is presumed
    # orphaned: its lease may be taken over and the janitor acts on it.
    stale_heartbeats: float = Field(3.0, ge=2)
    max_attempts: int = Field(3, ge=1)  # launches per run (retries after preemption / no capacity)
    # Errors the executor did not expect (a launcher bug): after this many since the
    # run's last status change, the run fails with the error instead of being retried.
    max_driver_errors: int = Field(3, ge=1)
    # The executor retries database work through transient errors (a lost connection,
    # a restarting server) this long before it gives up on the run's pass.
    db_retry_s: float = Field(60.0, ge=0)
    # A run dispatched again whose message nobody took (no worker up) is sent once more
    # only after this long: one message per run in flight, not one per stale window.
    redispatch_resend_s: float = Field(300.0, gt=0)
    # Redis only: an unacknowledged message goes back to the queue after this
    # long (a lost worker's run is redelivered). Duplicates are harmless: the
    # executor takes a lease on the run in the database.
    visibility_timeout_s: float = Field(3600.0, gt=0)
    # Longest wait between two tries to reach a lost broker (Kombu's own grows to 30 s):
    # a worker finds a returned broker within this.
    broker_retry_max_s: float = Field(2.0, gt=0, le=60)

    # --- scheduling ------------------------------------------------------------
    scheduler_tick_s: float = Field(5.0, gt=0)
    janitor_tick_s: float = Field(15.0, gt=0)

    # --- trainer data -------------------------------------------------------------
    # Caddie resolves DATA_PATH and TOKENIZER_PATH from a run's data variant (sp<VOCAB_SIZE>)
    # under this root: datasets/fineweb10B_sp1024/, tokenizers/fineweb_1024_bpe.model (the
    # layout `python -m trainer.data` writes). A spec never names a path. Default: home/data.
    data_root: Path | None = None

    # --- launcher choice -------------------------------------------------------
    launcher: str = Field("local", pattern=r"^(local|skypilot)$")

    # --- local launcher ----------------------------------------------------------
    runs_dir: Path | None = None  # default: home/runs; one folder per run and attempt
    gpu_count: int | None = Field(None, ge=0)  # None: count with `nvidia-smi -L`
    # argv that replaces `python -m trainer` (tests use a tiny stand-in script);
    # JSON list in the environment, e.g. CADDIE_TRAINER_COMMAND='["python","fake.py"]'
    trainer_command: list[str] | None = None
    cancel_grace_s: float = Field(5.0, ge=0, le=7.0)  # SIGTERM, then SIGKILL after this
    # every job runs sealed in bubblewrap (worker.launchers.sandbox); "none" is the unsafe opt-out
    sandbox: str = Field("bwrap", pattern=r"^(bwrap|none)$")

    # --- SkyPilot launcher --------------------------------------------------------
    sky_hardware: str = "H100:8"  # used when a run names no hardware
    sky_infra: str = ""  # "", "aws", "aws/us-east-1", "gcp/us-central1/us-central1-a", "kubernetes/<context>"
    sky_use_spot: bool = False
    sky_idle_minutes_to_autostop: int = Field(15, ge=1)  # the node downs itself after this idle time
    keep_warm_minutes: int = Field(10, ge=0)  # the janitor tears down clusters idle longer than this
    sky_cluster_prefix: str = Field("caddie", pattern=r"^[a-z][a-z0-9-]{0,20}$")
    sky_task_template: Path | None = None  # default: infra/skypilot/task.yaml of this checkout
    sky_workdir: Path | None = None  # default: this checkout, synced to the node and pip-installed
    sky_install_spec: str = ""  # pip requirement installed on the node instead, e.g. "caddie[gpu] @ git+https://..."
    sky_data_shards: int = Field(80, ge=1, le=1000)
    sky_disk_size_gb: int = Field(256, ge=50)
    sky_poll_s: float = Field(5.0, ge=0)  # status/log answers are reused this long (each is an API-server round trip)

    # The artifact store's settings (CADDIE_ARTIFACT_DIR, CADDIE_S3_*) live in
    # service.core.settings: the API reads what the worker writes, from one definition.

    @model_validator(mode="after")
    def _fill_paths_from_home(self) -> WorkerSettings:
        if self.runs_dir is None:
            self.runs_dir = self.home / "runs"
        if self.data_root is None:
            self.data_root = self.home / "data"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.home.resolve() / 'broker.sqlite'}"
        return self
