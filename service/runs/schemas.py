"""Request and response bodies of the run endpoints (pydantic v2)."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.dataclasses import dataclass as body_dataclass

from service.core.bodies import (
    NAME_MAX_CHARS,
    NOTES_MAX_CHARS,
    Handle,
    NoteText,
    PlainText,
    Seed,
    Strict,
)
from service.core.hardware import NodeHardware, deployment_hardware, where_it_runs
from service.core.models import Metric, Run, RunEvent
from service.core.settings import TRACKS, Settings, get_settings
from service.queue.schemas import POSITION_HELP, REASON_HELP, START_HELP
from service.runs.attempts import RunAttempt
from service.runs.logparse import MetricPoint


def spec_config_schema(schema: dict[str, Any]) -> None:
    """The OpenAPI schema of a spec's ``config``: the trainer's knob rules, less
    the knobs a spec may not set (those trainer/config.py marks ``set_by``)."""
    from trainer.config import TrainerConfig

    reserved = TrainerConfig.set_by("launcher") | TrainerConfig.set_by("seeds")
    knobs = TrainerConfig.json_schema()
    knobs["properties"] = {k: v for k, v in knobs["properties"].items() if k not in reserved}
    schema.update(knobs)


class ScriptFileUpload(Strict):
    """One extra file of a script run, placed beside train_gpt.py under ``name``."""

    name: str = Field(max_length=1000, description="relative path in the run folder: helper.py, tokenizers/custom.model")
    content: str = Field(description="the file's bytes, base64")


class ScriptEnvironment(Strict):
    """A script run's own Python environment, built by uv on the node before the run starts (once per
    node and content hash); a build that fails fails the run then, with uv's own message."""

    requirements: str | None = Field(None, description="the name of one of the run's files holding pip requirements (requirements.txt)")
    python: str | None = Field(None, description='the Python version, e.g. "3.12" (a string); default: the node\'s own', examples=["3.12"])
    packages: list[str] = Field(default_factory=list, description="requirements beyond the file, e.g. flash_attn_3 (the record's file unchanged)")
    index_urls: list[str] = Field(default_factory=list, description="extra package indexes (http(s) URLs), e.g. PyTorch's CUDA wheels")
    find_links: list[str] = Field(default_factory=list, description="pages of wheel links (http(s) URLs), e.g. FlashAttention 3's wheels")
    system_packages: list[str] = Field(default_factory=list, description="Debian packages the script needs on the node, e.g. lrzip "
                                       "(a SkyPilot node installs them; a local worker must have them, or the run fails at once naming them)")
    node_packages: bool = Field(False, description="also see the node's own Python packages (its torch and CUDA libraries), beneath "
                                "the environment's own: for a GPU image whose torch is not on any index the node can reach. The "
                                "environment's Python must then be the node's version")


class AbortIfBehind(Strict):
    """Stop the run early if it is clearly losing (service.runs.early_abort)."""

    step: int = Field(ge=1, le=1_000_000, description="the step at which its train loss is compared with the team's best run's "
                                                       "(same track and hardware, SUCCEEDED) at that step; must be a step the trainer logs")
    margin: float = Field(ge=0, le=10, description="nats of train loss it may be behind that best before it is stopped (absolute)")


class RunCreate(Strict):
    """A run spec: one run per seed, all in one group."""

    name: PlainText = Field(min_length=1, max_length=NAME_MAX_CHARS)
    notes: NoteText = Field("", max_length=NOTES_MAX_CHARS, description="free text; tabs and line breaks are kept, other control characters are refused")
    team: Handle | None = Field(None, description="team name; default: the caller's only team")
    track: str = Field(description="10min_16mb or unlimited (those of CADDIE_ALLOWED_TRACKS)", json_schema_extra={"enum": list(TRACKS)})
    hardware: str = Field(description="e.g. H100:8 (one of CADDIE_ALLOWED_HARDWARE)", examples=["H100:8", "H100:1", "cpu"])
    priority: int | None = Field(None, description="higher runs first within a team")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="trainer knobs keyed by env name (NUM_LAYERS) or field name; see GET /config/schema",
        json_schema_extra=spec_config_schema,
    )
    script: str | None = Field(None, description="a team's own challenge-format train_gpt.py, base64 (instead of config); "
                                                 "it runs as train_gpt.py under torchrun with SEED and the env below")
    files: list[ScriptFileUpload] = Field(default_factory=list, description="script runs: extra files beside train_gpt.py")
    env: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="script runs: NAME: value environment variables ([A-Z_][A-Z0-9_]*; RANK, PATH, LD_*, "
                                          "PYTHON*, SEED, DATA_PATH, ... are reserved)")
    public_env: list[str] = Field(default_factory=list, description="script runs: env names whose values other teams may see once the "
                                  "group is published; every other value shows as (private) outside the team")
    data: str | None = Field(None, description="script runs: the data variant, e.g. sp1024 (one of CADDIE_DATA_VARIANTS; default sp1024)")
    score_label: str | None = Field(None, description="script runs: a regex the label of the log's score line matches in full "
                                    "(e.g. my_eval_exact), for a log format caddie does not read yet")
    environment: ScriptEnvironment | None = Field(None, description="script runs: the Python environment train_gpt.py runs in; "
                                                  "default: the node's own Python")
    seeds: list[Seed] | None = Field(None, description="one run per seed (at most CADDIE_MAX_SEEDS, no duplicates)")
    seed: Seed | None = None
    allow_noncompliant: bool = Field(False, description="run a 10min_16mb spec that breaks the track's rules (no wallclock cap, a val token limit); its runs are flagged and never record-eligible")
    abort_if_behind: AbortIfBehind | None = Field(None, description="opt-in early abort: {step: 1000, margin: 0.02} stops the run, as "
                                                                    "ABORTED_BEHIND, if its train loss at that step is worse than the team's best by more than margin nats")


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    team: str
    user: str
    name: str
    notes: str
    kind: str = Field(description="trainer (the shared trainer, spec = its knobs) or script (a team's train_gpt.py, spec = its sha256, files, env, data)")
    spec: dict[str, Any]
    seed: int
    group_key: str
    track: str
    hardware: str
    priority: int
    status: str
    status_reason: str
    attempts: int = Field(description="times the run went back to the queue (preemption, a lost job); "
                                      "its launches are its events to PROVISIONING")
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    cancel_requested_at: datetime | None
    val_bpb: float | None
    val_loss: float | None
    pre_ttt_bpb: float | None
    artifact_bytes: int | None
    model_bytes: int | None
    code_bytes: int | None
    train_seconds: float | None
    eval_seconds: float | None
    steps: int | None
    peak_memory_mib: float | None
    log_bytes: int
    log_truncated_at: int | None = Field(None, description="the log passed CADDIE_LOG_MAX_BYTES: its first this many bytes are stored, the rest was read for metrics and figures only")
    allow_noncompliant: bool
    checks: list[dict[str, Any]] | None
    checks_verdict: str | None
    abort_if_behind: dict[str, Any] | None
    saved_seconds: float | None = Field(description="ABORTED_BEHIND: node seconds its early abort saved (its expected time minus what it used)")
    touches: dict[str, Any] | None = Field(None, description="a script run: what it opened and connected to, each with its time and "
                                           "phase (setup, train, eval by its log's lines; service.runs.touches), or why it was not watched")
    environment: dict[str, Any] | None = Field(None, description="the Python the latest attempt's job ran on, read from inside it after "
                                               "the job: python, torch, cuda, flash_attn, packages {name: version}; a declared environment's "
                                               "env_hash and declared description too; null: not collected yet")
    node_hardware: dict[str, Any] | None = Field(None, description="what the latest attempt's node reported at launch: gpu_name ('cpu' without a GPU), "
                                                 "gpus, source (e.g. 'nvidia-smi -L') and hardware (e.g. 'H100:8', 'cpu'); the rules judge "
                                                 "and billing bills it, not the spec's hardware; null: not launched yet")
    runs_on: str | None = Field(None, description="where the run ran (its node's report) or will run, in a sentence: says plainly when that "
                                                 "is not the hardware it asked for (CADDIE_UNAVAILABLE_HARDWARE=accept); single-run bodies only")
    attempt_history: list[RunAttempt] | None = Field(None, description="each attempt of the run (one launch each, relaunches after a lost node "
                                                     "or no capacity included): its number, launch key, node, times, how it ended and the "
                                                     "GPU-seconds billed for it, from its events (service.runs.attempts); GET /runs/{id} only, "
                                                     "null in lists and other bodies")  # fmt: skip
    # Not columns: the scheduler's forecast, filled in for QUEUED runs when read (service.queue.positions).
    queue_position: int | None = Field(None, description=POSITION_HELP)
    estimated_start_at: datetime | None = Field(None, description=START_HELP)
    waiting_reason: str | None = Field(None, description=REASON_HELP)

    @classmethod
    def from_run(cls, run: Run, settings: Settings | None = None, **queue: Any) -> "RunOut":
        values = {name: getattr(run, name) for name in cls.model_fields if name not in ("team", "user", *NOT_COLUMNS)}
        return cls(team=run.team.name, user=run.user.name, touches=(run.result or {}).get("touches"), runs_on=runs_on(run, settings), **values, **queue)


class RunCancelled(RunOut):
    """POST /runs/{id}/cancel: the run, and what the cancel came to."""

    cancel_outcome: str = Field(description="cancelled (the run is CANCELLED), requested (still active: the worker stops the job), "
                                            "finished_first (it ended otherwise before the cancel took effect; what it stored is kept)")
    cancel_note: str = Field(description="the outcome in a sentence")


QUEUE_FIELDS = ("queue_position", "estimated_start_at", "waiting_reason")
NOT_COLUMNS = (*QUEUE_FIELDS, "touches", "runs_on", "attempt_history")  # read from elsewhere (the forecast, runs.result, the deployment), not a column each


def runs_on(run: Run, settings: Settings | None = None) -> str:
    """service.core.hardware.where_it_runs for this run, against the deployment (the app's settings;
    None: this process's)."""
    return where_it_runs(run.hardware, NodeHardware.from_json(run.node_hardware), deployment_hardware(settings or get_settings()))


class RunsCreated(BaseModel):
    group_key: str
    runs: list[RunOut]


class RunPage(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    items: list[RunOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class RunEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    from_status: str | None
    to_status: str
    actor: str
    reason: str

    @classmethod
    def of(cls, event: RunEvent) -> "RunEventOut":
        return cls.model_validate(event)


# The domain's MetricPoint (service/runs/logparse.py: what the parser reads, what the metrics
# table stores) declares a point's fields once; the body is that point, read from its row.
@body_dataclass(frozen=True)
class MetricOut(MetricPoint):
    """One point of a run's loss curve: a train point has train_loss, a val point val_loss and val_bpb."""

    @classmethod
    def of(cls, metric: Metric) -> "MetricOut":
        return cls(**{f.name: getattr(metric, f.name) for f in fields(MetricPoint)})



# --- artifacts ------------------------------------------------------------------
class ArtifactOut(BaseModel):
    """One stored file of a run; ``name`` is unique within the run and is the last part of ``url``."""

    name: str = Field(description="file name, e.g. model.int6.ptz, train.log, train_gpt.py")
    kind: str = Field(description="model, code, log, result or metrics")
    bytes: int | None
    sha256: str | None = Field(description="hex digest of the stored bytes")
    created_at: datetime
    url: str = Field(description="where to download it (GET, streamed)")
