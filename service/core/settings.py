"""caddie's settings: one object for the API, the workers and the CLI's `caddie up`
(pydantic-settings, env prefix CADDIE_).

Every setting is an environment variable, e.g. ``CADDIE_DATABASE_URL``, described by its
field's ``description`` (the README's table is generated from them: ``python -m
service.core.settings``). The defaults give the embedded setup: a SQLite file, artifacts,
run folders and the broker under CADDIE_HOME (./.caddie). Production points
CADDIE_DATABASE_URL at PostgreSQL (``postgresql+psycopg://user@host/caddie``) and
CADDIE_BROKER_URL at Redis. The API and the workers read the same scheduling fields, so
the queue forecast a page shows decides as dispatch does.
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.core.hardware import parse_capacity
from trainer.recipes import parse_sources

TRACKS = ("10min_16mb", "unlimited")
# The ceiling over every run's own deadline (worker.run.deadlines).
DEFAULT_HARD_TIMEOUT_S = 6 * 3600.0
# The challenge's record folders beside the checkout (../shared/challenge/records/...).
DEFAULT_RECORDS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "challenge" / "records" / "track_10min_16mb"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADDIE_", extra="ignore")

    home: Path = Field(Path(".caddie"), description="Where caddie keeps its own files by default: the SQLite database, artifacts, run folders, the data root, the broker file, the session key.")
    database_url: str = Field("", description="default: sqlite:///{home}/caddie.db")
    db_echo: bool = Field(False, description="Log every SQL statement (debugging).")
    db_pool_size: int = Field(20, ge=1, le=200, description="PostgreSQL only")
    db_max_overflow: int = Field(20, ge=0, le=200, description="PostgreSQL only: connections opened past the pool under load.")
    db_pool_pre_ping: bool = Field(False, description="Pinging on every checkout costs a round trip per request; recycling connections now and then is enough behind a stable PostgreSQL.")
    db_pool_recycle_s: int = Field(1800, ge=-1, description="PostgreSQL only: a pooled connection older than this is replaced (-1: never).")
    sqlite_busy_timeout_ms: int = Field(5000, ge=0, description="SQLite only: how long a write waits for another process's lock.")

    # --- run specs -------------------------------------------------------------
    allowed_hardware: str = Field("H100:8,H100:1,H200:8,cpu", description="Comma-separated hardware strings a run may ask for. On the local launcher this machine as it is (e.g. `H100:2`, `H200:1`) is accepted too, listed or not.")
    provided_hardware: str = Field("", description="Comma-separated hardware strings this deployment can really provide. Empty: derived from the launcher: local, this machine as `nvidia-smi -L` (or CADDIE_GPU_COUNT) lists it (every local job runs on all its GPUs, e.g. `H100:8`, or `cpu`); skypilot, every NAME:COUNT of CADDIE_ALLOWED_HARDWARE (set it to what your infra offers).")
    unavailable_hardware: str = Field("refuse", pattern=r"^(refuse|accept)$", description="A spec for allowed hardware the deployment cannot provide: `refuse` (422 naming the field and what is provided) or `accept` (queued; its body and page say plainly where it will run, and it is judged and billed on what ran).")
    allowed_tracks: str = Field(",".join(TRACKS), description="Comma-separated tracks a run may name; 10min_16mb is the record track, judged by the challenge's rules.")
    max_seeds: int = Field(16, ge=1, le=1000, description="Seeds one spec may ask for (one run each).")
    max_spec_bytes: int = Field(65536, ge=1024, description="raw request body of POST /runs")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Any other request body (JSON, web forms): larger ones get 413 before they are read.")
    team_storage_quota_bytes: int = Field(100 * 1024**3, ge=0, description="what one team's runs may hold: artifacts + stored logs + script files. A submission (API or web) of a team at its quota, or whose script files would pass it, is refused with 403 naming the quota, the use by kind and the upload; a run's collected output files that would pass it are not stored (in the run's order: the model first) and the run gets a note naming the quota and each file left out, its figures kept. Both decide on the team's total held to their commit, so submissions and collects at the same moment cannot pass it together (`0`: none)")
    default_priority: int = Field(0, description="A run's priority within its team when its spec names none.")
    min_priority: int = Field(-100, description="Lowest priority a spec may ask for.")
    max_priority: int = Field(100, description="Highest priority a spec may ask for.")
    data_variants: str = Field("sp1024,sp4096,sp8192,sp8192_caseops", description="Data variants a run may train on, each a recipe (trainer/recipes.py): sp<VOCAB_SIZE> is a dataset's shards and tokenizer downloaded from its source; sp8192_caseops is the challenge's documents built by the run's own prepare_caseops_data.py (a script run, with that script, lossless_caps.py and its tokenizer among its files) or, for the shared trainer, by caddie's own CaseOps builder with the records' tokenizer fetched from romeerp/parameter-golf-caseops-v1. The shared trainer's variant is sp<VOCAB_SIZE> of its VOCAB_SIZE, or sp8192_caseops under CASEOPS_ENABLED.")
    max_script_file_bytes: int = Field(8_000_000, ge=1024, description="Script runs (a team's own train_gpt.py): what one spec may upload and set. The script and its files count toward the 16,000,000-byte artifact, hence the total.")
    max_script_total_bytes: int = Field(16_000_000, ge=1024, description="All of one script run's files together.")
    max_script_files: int = Field(32, ge=0, le=1000, description="Files one script run may upload besides train_gpt.py.")
    max_script_env_vars: int = Field(100, ge=0, le=10_000, description="Environment variables one script run may set.")
    max_script_env_value_chars: int = Field(4096, ge=1, description="Characters of one such variable's value.")

    # --- accounting ------------------------------------------------------------
    gpu_prices: str = Field("H100=2.99,H200=3.79,cpu=0", description="Dollars per GPU-hour, per accelerator ('H100') or per exact hardware string ('H100:8', which wins over its accelerator). Hardware with no price is billed in GPU-hours only and listed as unpriced. Checked when the settings load.")
    cold_provision_s: float = Field(360.0, ge=0, description="Seconds a freshly provisioned node takes to come up, for the provisioning a warm start saved when the report's window holds no cold start of that hardware to measure it on.")

    # --- API -------------------------------------------------------------------
    api_prefix: str = Field("/api/v1", description="Path prefix of the REST API.")
    token_touch_interval_s: float = Field(60.0, ge=0, description="last_used_at of a token is written at most this often, so that a busy client does not turn every read into a write.")
    on_submit_hook: str = Field("", description="'module:function' called with the ids of newly submitted runs, after the response (the worker's is worker.notify:runs_submitted: a scheduler tick now instead of at beat's next one). The service never imports the worker.")
    web_session_days: float = Field(14.0, gt=0, le=366, description="How long a web sign-in lasts: its cookie's max-age and the expiry of the session token behind it (a row of api_tokens with expires_at). An expired session signs in no more; sign-out deletes its token at once, and the janitor deletes expired and revoked session tokens every round, so sign-ins leave nothing behind. API tokens made with `caddie token create` never expire.")
    secret_key: str = Field("", description="Signs the web pages' session cookies and their CSRF tokens. Empty: a random key is made once and kept in $CADDIE_HOME/secret_key (every API process of one deployment must share it: set it explicitly when they share no disk).")

    # --- artifact store: the worker writes a run's files, the API reads them ---------
    artifact_dir: Path | None = Field(None, description="local artifact store (the worker writes it, the API serves downloads from it: give both the same)")
    s3_bucket: str = Field("", description="Keep artifacts in this S3-compatible bucket instead of artifact_dir.")
    s3_prefix: str = Field("caddie", description="Key prefix of caddie's objects in the bucket.")
    s3_endpoint_url: str = Field("", description="MinIO, R2, ...: leave empty for AWS S3")

    # --- scheduling: the API's queue forecasts decide as the worker's dispatch does ---
    max_concurrent_runs: int = Field(1, ge=0, description="per hardware string, unless `capacity` names it")
    capacity: str = Field("", pattern=r"^\s*([^=,\s]+\s*=\s*\d+\s*(,\s*[^=,\s]+\s*=\s*\d+\s*)*)?$", description="per hardware, e.g. 'H100:8=2,cpu=4'")
    budget_period_days: float = Field(30.0, gt=0, description="Team budgets are GPU-hours billed (service.billing.accounting) over a rolling period of this many days.")
    expected_run_hours: float = Field(1 / 3, gt=0, description="fair-share charge of one started run")
    retry_backoff_s: float = Field(60.0, ge=0, description="a requeued run waits this long, doubled per attempt")
    run_overhead_s: float = Field(1200.0, ge=0, description="A run's expected node time = its training cap (MAX_WALLCLOCK_SECONDS, else the track's 600 s) + this: provisioning, setup, data download, evaluation (up to 600 s) and upload. Budgets refuse a run whose expected cost would not fit; queue forecasts use it as the run's length.")
    queue_forecast_max_starts: int = Field(200, ge=1, description="Queue forecasts (service/queue/positions.py): each simulated start re-runs the policy over the whole queue, so the forecast stops after this many starts ('beyond the horizon') ...")
    queue_forecast_interval_s: float = Field(10.0, gt=0, description="The control worker computes the forecast every this many seconds and stores it (queue_estimates) for every API replica to read (worker/control/forecast.py, service/queue/stored.py) ...")
    queue_forecast_nice: int = Field(10, ge=0, le=19, description="The control worker computes the forecast in a thread this much nicer than itself (Linux), so on a machine it shares with the API the forecast's second or so of CPU waits for requests, not they for it; 0: same priority.")
    queue_forecast_stale_s: float = Field(60.0, gt=0, description="... an API trusts a stored forecast younger than this; older (worker down) or none, it computes one itself for a short queue (as below) and logs that it does, and answers a long one from the stale one ...")
    queue_forecast_inline_max: int = Field(1000, ge=0, description="... and a run the stored forecast lacks (submitted or requeued since) is forecast in the API only while the queue is this small (cheap); past it, it waits for the next stored one, and GET /queue answers from the stored forecast however old (its age in X-Queue-Forecast-Age-S): no request forecasts a long queue.")
    queue_forecast_ttl_s: float = Field(10.0, ge=0, description="An API computing the forecast itself reuses it for this many seconds (0: every request computes it).")

    # --- worker: broker and the executor's loop --------------------------------------
    broker_url: str = Field("", description="default: a SQLite-backed kombu broker under home (needs no server)")
    heartbeat_s: float = Field(5.0, gt=0, description="How often a worker driving a run renews its lease on it.")
    hard_timeout_s: float = Field(DEFAULT_HARD_TIMEOUT_S, gt=0, description="The ceiling over every run's own deadline: a run asking for long training caps still ends within this.")
    eval_cap_s: float = Field(600.0, ge=0, description="A run's deadline: its training cap + eval_cap_s + deadline_overhead_s (worker.run.deadlines).")
    deadline_overhead_s: float = Field(300.0, ge=0, description="Added to a run's training and evaluation caps for its deadline: provisioning, setup and upload.")
    silence_timeout_s: float = Field(600.0, ge=0, description="a job whose log grew by nothing this long is presumed hung, stopped and FAILED with that reason (`0`: off)")
    idle_timeout_s: float = Field(10.0, ge=0, description="the hang watch (local launcher and SkyPilot nodes): a job whose log grew by nothing this long while it used less than 1% of a core and no GPU of the machine was busy is presumed hung (asleep, deadlocked), stopped and FAILED with that reason; a trainer at work prints, computes or keeps a GPU busy. Hangs that spin are left to `silence_timeout_s` (`0`: off)")
    max_train_points: int = Field(10_000, ge=100, description="train-loss points the worker keeps per run attempt: past it the curve is thinned to every 2nd, 4th, ... step (stored points too), so a long run keeps its whole curve at a coarser step; validation points and final figures are all kept. `GET /runs/{id}/metrics` is paged (`offset`, `limit` up to 10,000; a `Link: rel='next'` header while more follow)")
    log_max_bytes: int = Field(64 * 1024 * 1024, ge=0, description="log stored per run (all attempts). Past it the log's first part (whole lines) is kept and the rest is still read for metrics and the final figures but not stored; the run goes on (its result is what it ran for, storage is what the cap protects). The run says where: `log_truncated_at` in the API, a line above the log on its page (`0`: no cap). The log is stored once: in the database while the run is active (the live tail), then as the run's `stdout.log` in the artifact store, its database copy deleted in the same commit, and the job's own uncapped copy (the local launcher's run folder `stdout.log`) removed; it stays past `CADDIE_RETENTION_DAYS`")
    retention_days: float = Field(30.0, ge=0, description="the janitor removes the artifacts (store objects), run folder and script files (those no newer or active run names) of runs ended longer ago; the run's row, figures, metrics and stored log stay, and the run gets an event saying what went (`0`: keep for ever)")
    poll_interval_s: float = Field(0.2, gt=0, le=30, description="How often the executor polls the job (status, log, cancel request); the trainer-exit -> SUCCEEDED delay is about one poll.")
    stale_heartbeats: float = Field(3.0, ge=2, description="A run whose heartbeat is older than this many heartbeats is presumed orphaned: its lease may be taken over and the janitor acts on it.")
    max_attempts: int = Field(3, ge=1, description="attempts per run that end otherwise than by a lost node (no capacity, a failed launch): at this many the run fails instead of going back to the queue")
    max_node_lost: int = Field(4, ge=1, description="times a run's node may die under it (a preempted spot node, a dead machine: requeued at once, relaunched from step 0 on a fresh node, each attempt billed) before the run fails: counted apart from `CADDIE_MAX_ATTEMPTS`, since a lost node is not the run's doing, and bounded, since a run whose node dies every time would otherwise be paid for again and again")
    max_driver_errors: int = Field(3, ge=1, description="Errors the executor did not expect (a launcher bug): after this many since the run's last status change, the run fails with the error instead of being retried.")
    db_retry_s: float = Field(60.0, ge=0, description="The executor retries database work through transient errors (a lost connection, a restarting server) this long before it gives up on the run's pass.")
    redispatch_resend_s: float = Field(300.0, gt=0, description="A run dispatched again whose message nobody took (no worker up) is sent once more only after this long: one message per run in flight, not one per stale window.")
    visibility_timeout_s: float = Field(3600.0, gt=0, description="Redis only: an unacknowledged message goes back to the queue after this long (a lost worker's run is redelivered). Duplicates are harmless: the executor takes a lease on the run in the database.")
    broker_retry_max_s: float = Field(2.0, gt=0, le=60, description="longest wait between tries to reach a lost broker; a worker whose consumer fails on the lost connection exits at once so its supervisor restarts it (its runs' jobs carry on and are re-attached)")

    # --- worker: ticks ------------------------------------------------------------
    scheduler_tick_s: float = Field(5.0, gt=0, description="How often beat asks the scheduler to start what fits (runs ending and submissions also ask).")
    janitor_tick_s: float = Field(15.0, gt=0, description="How often the janitor looks for orphaned runs and forgotten clusters.")

    # --- notifications: team webhooks (service/webhooks) --------------------------------
    public_url: str = Field("", description="The web pages' address as users reach them (e.g. https://caddie.example.org): a webhook's body links to the run, group or sweep under it. Empty: the links are paths only.")
    webhook_allow_private: bool = Field(False, description="Let a team's webhook URL name a loopback, private, link-local or otherwise internal address. Off by default: a webhook makes the control worker POST where a team says, so it could reach services inside the deployment (a metadata endpoint, a database's HTTP port). Checked when the URL is set and again, on the resolved addresses, at every send.")
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="One webhook POST (connect, send, answer) gives up after this long; the control worker's webhook tick never waits longer on one endpoint.")
    webhook_max_attempts: int = Field(5, ge=1, le=50, description="Tries of one notification before it is given up (recorded as failed, with the last error).")
    webhook_backoff_s: float = Field(30.0, ge=0, description="A failed notification is tried again after this long, doubled per try.")
    webhook_tick_s: float = Field(5.0, gt=0, description="How often the control worker sends the notifications that are due (beat's caddie.webhook_tick).")
    webhook_batch: int = Field(50, ge=1, le=10_000, description="Notifications one webhook tick sends at most; the rest wait for the next tick.")
    webhook_retention_days: float = Field(30.0, ge=0, description="The janitor deletes sent and failed notifications (the rows the team's deliveries page lists) queued longer ago than this; pending ones stay whatever their age (`0`: keep for ever).")

    # --- trainer data -------------------------------------------------------------
    data_root: Path | None = Field(None, description="Caddie resolves DATA_PATH and TOKENIZER_PATH from a run's data variant under this root: datasets/fineweb10B_sp1024/, tokenizers/fineweb_1024_bpe.model (the layout `python -m trainer.data download` writes); a recipe with a build step is built once into built/<content hash>/. A spec names a path only where its recipe lets it (sp8192_caseops: DATA_PATH and TOKENIZER_PATH inside ./data). Default: home/data.")
    data_sources: str = Field("", description="Where each data variant downloads from, overriding its recipe's source: `variant=owner/name[/prefix]` items separated by commas, or a JSON object {variant: \"owner/name[/prefix]\"}; the prefix is the repository's folder holding manifest.json (`datasets` when omitted, a trailing `/` for the top). Unnamed variants keep their recipe's: sp1024 and sp8192_caseops's documents from willdepueoai/parameter-golf, sp4096 and sp8192 from kevclark/parameter-golf. Passed to SkyPilot nodes; checked at start.")

    # --- a script run's own Python environment -----------------------------------
    envs_dir: Path | None = Field(None, description="Where the local launcher builds each script run's declared environment (its spec's `environment`), with uv, once per content hash: envs/<hash>/, then uv's cache and the Pythons uv fetched. Default: home/envs.")
    env_wheels: Path | None = Field(None, description="A folder of wheels offered to every environment build (uv --find-links), e.g. FlashAttention 3's for nodes without its wheel page. Unset: none.")
    env_offline: bool = Field(False, description="Build environments without the network (uv --offline, no Python downloads): only from uv's cache, CADDIE_ENV_WHEELS and this machine's Pythons.")
    env_build_timeout_s: float = Field(1800.0, gt=0, description="One step of an environment build (uv venv, uv pip install) fails the run past this long.")

    # --- sweeps ---------------------------------------------------------------------
    records_dir: Path | None = Field(None, description="The public records' folders (one per record, a log per seed) whose finished curves the sweep pruner's predictor is fitted on, beside the team's own runs. Default: ../shared/challenge/records/track_10min_16mb beside this checkout; a deployment points it at its copy of the challenge repository. Missing: the predictor fits on the team's runs alone.")

    # --- launcher choice -------------------------------------------------------
    launcher: str = Field("local", pattern=r"^(local|skypilot)$", description="Where runs run: this machine ('local') or nodes through SkyPilot ('skypilot').")

    # --- local launcher ----------------------------------------------------------
    runs_dir: Path | None = Field(None, description="default: home/runs; one folder per run and attempt")
    gpu_count: int | None = Field(None, ge=0, description="None: count with `nvidia-smi -L`")
    trainer_command: list[str] | None = Field(None, description="argv that replaces `python -m trainer` (tests use a tiny stand-in script); JSON list in the environment, e.g. CADDIE_TRAINER_COMMAND='['python','fake.py']'")
    cancel_grace_s: float = Field(5.0, ge=0, le=7.0, description="SIGTERM, then SIGKILL after this")
    sandbox: str = Field("bwrap", pattern=r"^(bwrap|none)$", description="every local job runs sealed in bubblewrap (see 'Sealed jobs'); `none` runs jobs unsealed as the worker's own user: unsafe, only for a single trusted team")
    job_memory_bytes: int = Field(0, ge=0, description="A running local job's memory: its processes (PSS) plus what its /tmp and /dev/shm hold (RAM; each sized at this). Past it the job is killed and its run FAILS, the reason naming this setting (see 'Sealed jobs'). 0: 80% of the machine's memory, or of the worker's cgroup limit where less (a container's).")
    compile_cache_dir: Path | None = Field(None, description="Each team's torch.compile and Triton caches, kept between the team's local jobs (team-<id>/, bound writable into that team's sealed jobs only), so a run of code compiled before starts in seconds, not minutes. Default: home/compile-cache.")
    compile_cache_bytes: int = Field(20 * 1024**3, ge=0, description="A team's compile cache is trimmed to this (least recently written first) before each of its jobs; what a job adds counts toward its CADDIE_JOB_DISK_BYTES. 0: no cache (every job compiles in its own /tmp).")
    job_disk_bytes: int = Field(20 * 1024**3, ge=0, description="A running local job's run folder (its outputs, caches, stdout.log): no file may grow past it (RLIMIT_FSIZE) and past it in all the job is killed and its run FAILS, the reason naming this setting. 0: no limit.")

    # --- SkyPilot launcher --------------------------------------------------------
    sky_hardware: str = Field("H100:8", description="used when a run names no hardware")
    sky_infra: str = Field("", description="'', 'aws', 'aws/us-east-1', 'gcp/us-central1/us-central1-a', 'kubernetes/<context>'")
    sky_use_spot: bool = Field(False, description="Ask SkyPilot for spot instances (preempted runs are requeued).")
    sky_idle_minutes_to_autostop: int = Field(15, ge=1, description="the node downs itself after this idle time")
    keep_warm_minutes: int = Field(10, ge=0, description="the janitor tears down clusters idle longer than this")
    sky_cluster_prefix: str = Field("caddie", pattern=r"^[a-z][a-z0-9-]{0,20}$", description="Names of caddie's SkyPilot clusters start with this (then the team).")
    sky_task_template: Path | None = Field(None, description="default: infra/skypilot/task.yaml of this checkout")
    sky_workdir: Path | None = Field(None, description="default: this checkout, synced to the node and pip-installed")
    sky_install_spec: str = Field("", description="pip requirement installed on the node instead, e.g. 'caddie[gpu] @ git+https://...'")
    sky_data_shards: int = Field(80, ge=1, le=1000, description="Training shards a node downloads for a run.")
    sky_disk_size_gb: int = Field(256, ge=50, description="Disk of each node.")
    sky_poll_s: float = Field(5.0, ge=0, description="status/log answers are reused this long (each is an API-server round trip)")

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home}/caddie.db"
        if self.artifact_dir is None:
            self.artifact_dir = self.home / "artifacts"
        if self.runs_dir is None:
            self.runs_dir = self.home / "runs"
        if self.data_root is None:
            self.data_root = self.home / "data"
        if self.envs_dir is None:
            self.envs_dir = self.home / "envs"
        if self.compile_cache_dir is None:
            self.compile_cache_dir = self.home / "compile-cache"
        if self.records_dir is None:
            self.records_dir = DEFAULT_RECORDS_DIR
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.home.resolve() / 'broker.sqlite'}"
        parse_gpu_prices(self.gpu_prices)  # a bad price list fails at start, naming the item
        parse_sources(self.data_sources)  # so does a bad data source (RecipeError is a ValueError)
        return self

    @property
    def capacity_table(self) -> dict[str, int]:
        return parse_capacity(self.capacity, self.max_concurrent_runs)

    @property
    def hardware_choices(self) -> list[str]:
        return [h.strip() for h in self.allowed_hardware.split(",") if h.strip()]

    @property
    def track_choices(self) -> list[str]:
        return [t.strip() for t in self.allowed_tracks.split(",") if t.strip()]

    @property
    def data_variant_choices(self) -> list[str]:
        return [v.strip() for v in self.data_variants.split(",") if v.strip()]

    @property
    def max_request_bytes(self) -> int:
        """The largest POST /runs body: a spec plus its script files in base64 (4 characters per 3 bytes)."""
        return self.max_spec_bytes + 4 * -(-self.max_script_total_bytes // 3) + 1024 * self.max_script_files

    @property
    def gpu_price_table(self) -> dict[str, float]:
        return parse_gpu_prices(self.gpu_prices)


def parse_gpu_prices(spec: str) -> dict[str, float]:
    """``"H100=2.99,cpu=0"`` -> {"H100": 2.99, "cpu": 0.0} (dollars per GPU-hour).

    Raises ValueError naming the bad item: no ``=``, an empty name, a repeated
    name, or a price that is not a finite number >= 0."""
    prices: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, number = item.partition("=")
        name = name.strip()
        try:
            price = float(number)
        except ValueError:
            price = float("nan")
        if not sep or not name:
            raise ValueError(f"CADDIE_GPU_PRICES item {item!r}: expected ACCELERATOR=DOLLARS_PER_GPU_HOUR, e.g. H100=2.99")
        if not (math.isfinite(price) and price >= 0):
            raise ValueError(f"CADDIE_GPU_PRICES item {item!r}: the price must be a finite number >= 0")
        if name in prices:
            raise ValueError(f"CADDIE_GPU_PRICES names {name!r} twice")
        prices[name] = price
    return prices


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def markdown_table() -> str:
    """The README's settings table: every setting, its default and what it does."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(empty)" if default in ("", None) else str(default)
        rows.append(f"| `CADDIE_{name.upper()}` | `{shown}` | {(field.description or '').replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
