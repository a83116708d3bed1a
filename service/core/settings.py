"""Service settings (pydantic-settings, env prefix CADDIE_).

Every setting is an environment variable, e.g. ``CADDIE_DATABASE_URL``. The
defaults give the embedded setup: a SQLite file under CADDIE_HOME (./.caddie).
Production points CADDIE_DATABASE_URL at PostgreSQL
(``postgresql+psycopg://user@host/caddie``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from service.queue.settings import SchedulingSettings

TRACKS = ("10min_16mb", "unlimited")


class Settings(SchedulingSettings):
    """The API's settings; the scheduling ones (capacity, budgets, run estimates) are inherited
    from service.queue.settings, the worker's own, so queue forecasts decide as dispatch does."""

    model_config = SettingsConfigDict(env_prefix="CADDIE_", extra="ignore")

    home: Path = Path(".caddie")
    database_url: str = ""  # default: sqlite:///{home}/caddie.db
    db_echo: bool = False
    db_pool_size: int = Field(20, ge=1, le=200)  # PostgreSQL only
    db_max_overflow: int = Field(20, ge=0, le=200)
    # Pinging on every checkout costs a round trip per request; recycling
    # connections now and then is enough behind a stable PostgreSQL.
    db_pool_pre_ping: bool = False
    db_pool_recycle_s: int = Field(1800, ge=-1)
    sqlite_busy_timeout_ms: int = Field(5000, ge=0)

    # --- run specs -------------------------------------------------------------
    # Comma-separated hardware strings a run may ask for.
    allowed_hardware: str = "H100:8,H100:1,H200:8,cpu"
    allowed_tracks: str = ",".join(TRACKS)
    max_seeds: int = Field(16, ge=1, le=1000)
    max_spec_bytes: int = Field(65536, ge=1024)  # raw request body of POST /runs
    # Any other request body (JSON, web forms): larger ones get 413 before they are read.
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # Bytes a team's runs may hold (artifacts + stored logs + script files): a submission past it is refused (0: none).
    team_storage_quota_bytes: int = Field(100 * 1024**3, ge=0)
    default_priority: int = 0
    min_priority: int = -100
    max_priority: int = 100
    # Data variants (tokenizer + shards) a run may train on: a run's variant is
    # sp<VOCAB_SIZE>, and the worker finds its folders under its own data root.
    data_variants: str = "sp1024,sp4096,sp8192"
    # Script runs (a team's own train_gpt.py): what one spec may upload and set. The
    # script and its files count toward the 16,000,000-byte artifact, hence the total.
    max_script_file_bytes: int = Field(8_000_000, ge=1024)
    max_script_total_bytes: int = Field(16_000_000, ge=1024)
    max_script_files: int = Field(32, ge=0, le=1000)
    max_script_env_vars: int = Field(100, ge=0, le=10_000)
    max_script_env_value_chars: int = Field(4096, ge=1)

    # --- accounting ------------------------------------------------------------
    # Dollars per GPU-hour, per accelerator ("H100") or per exact hardware string
    # ("H100:8", which wins over its accelerator). Hardware with no price is billed
    # in GPU-hours only and listed as unpriced. Checked when the settings load.
    gpu_prices: str = "H100=2.99,H200=3.79,cpu=0"
    # Seconds a freshly provisioned node takes to come up, for the provisioning a warm start
    # saved when the report's window holds no cold start of that hardware to measure it on.
    cold_provision_s: float = Field(360.0, ge=0)

    # --- API -------------------------------------------------------------------
    api_prefix: str = "/api/v1"
    # last_used_at of a token is written at most this often, so that a busy
    # client does not turn every read into a write.
    token_touch_interval_s: float = Field(60.0, ge=0)
    # "module:function" called with the ids of newly submitted runs, after the
    # response (the worker's is worker.notify:runs_submitted: a scheduler tick
    # now instead of at beat's next one). The service never imports the worker.
    on_submit_hook: str = ""
    # Signs the web pages' session cookies and their CSRF tokens. Empty: a random
    # key is made once and kept in $CADDIE_HOME/secret_key (every API process of
    # one deployment must share it: set it explicitly when they share no disk).
    secret_key: str = ""

    # --- artifact store: the worker writes a run's files, the API reads them ---------
    artifact_dir: Path | None = None  # default: home/artifacts (used when no bucket is set)
    s3_bucket: str = ""
    s3_prefix: str = "caddie"
    s3_endpoint_url: str = ""  # MinIO, R2, ...: leave empty for AWS S3

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home}/caddie.db"
        if self.artifact_dir is None:
            self.artifact_dir = self.home / "artifacts"
        parse_gpu_prices(self.gpu_prices)  # a bad price list fails at start, naming the item
        return self

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
