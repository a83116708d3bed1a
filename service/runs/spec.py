"""A submitted spec made canonical (no I/O): its non-default knobs, track, hardware and
seeds, and the group key that one configuration's seeds share."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import InvalidInput, Issue
from service.core.hardware import deployment_hardware, hardware_options
from service.core.models import SCRIPT_KIND, TRAINER_KIND
from service.core.settings import Settings
from service.runs.compliance import spec_noncompliance
from service.runs.early_abort import unlogged_step
from service.runs.schemas import RunCreate
from service.runs.scripts.spec import ScriptLimits, check_script_spec
from trainer.config import ConfigError, TrainerConfig

# Knobs a spec may not set (declared with ``set_by`` in trainer/config.py), and why:
# the seed comes from ``seeds``/``seed`` (it is what varies inside a group); the output
# folder, the data and the tokenizer are the worker's, found from the run's data variant
# (sp<VOCAB_SIZE>) under its data root.
_WHY_NOT = {
    "seeds": "set the seed with seeds/seed, not in config",
    "OUTPUT_DIR": "chosen by the worker",
    "launcher": "set by caddie from the data variant, sp<VOCAB_SIZE> (choose the data with VOCAB_SIZE, e.g. 1024 for sp1024); a spec never names a path",
}
RESERVED_KNOBS = {name: _WHY_NOT.get(name, _WHY_NOT[who]) for who in ("seeds", "launcher") for name in sorted(TrainerConfig.set_by(who))}
DEFAULT_SEED = 1337


@dataclass(frozen=True)
class NormalisedSpec:
    config: dict[str, Any]  # non-default knobs keyed by env name, sorted; a script run's ScriptSpec JSON
    track: str
    hardware: str
    allow_noncompliant: bool = False
    kind: str = TRAINER_KIND  # or SCRIPT_KIND
    blobs: dict[str, bytes] = field(default_factory=dict)  # a script run's files by sha256, to store
    # The shared trainer's config, parsed once here for every later check of the submission
    # (early abort's step, the size check); None for a script run.
    trainer: TrainerConfig | None = field(default=None, compare=False)

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
    return canonical(parse_config(config))


def canonical(cfg: TrainerConfig) -> dict[str, Any]:
    return dict(sorted(cfg.overrides().items()))


def parse_config(config: dict[str, Any]) -> TrainerConfig:
    """The trainer's config of a spec's overrides, or InvalidInput naming each bad knob."""
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
    return cfg


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
    if spec.hardware not in (options := hardware_options(settings)):
        issues.append(Issue(("hardware",), f"must be one of {', '.join(options)} (CADDIE_ALLOWED_HARDWARE, and this machine on the local launcher)",
                            spec.hardware))
    elif settings.unavailable_hardware == "refuse" and spec.hardware not in (provided := deployment_hardware(settings)):
        issues.append(Issue(("hardware",), f"this deployment cannot provide {spec.hardware}: it provides {', '.join(provided) or 'nothing'} "
                            f"(launcher {settings.launcher}; CADDIE_PROVIDED_HARDWARE declares it, "
                            f"CADDIE_UNAVAILABLE_HARDWARE=accept runs such a spec on what is here)", spec.hardware))  # fmt: skip
    if spec.priority is not None and not settings.min_priority <= spec.priority <= settings.max_priority:
        issues.append(Issue(("priority",), f"must be >= {settings.min_priority} and <= {settings.max_priority}", spec.priority))
    seeds = _seeds(spec, settings, issues)
    if _is_script(spec):
        return _normalise_script(spec, settings, issues), seeds
    cfg: TrainerConfig | None = None
    try:
        cfg = parse_config(spec.config)
    except InvalidInput as exc:
        issues += exc.issues
        config = {}
    else:
        config = canonical(cfg)
        variant = cfg.data_variant  # the stack's VOCAB_SIZE too, which canonical() leaves out
        if cfg.caseops_enabled and variant not in settings.data_variant_choices:
            issues.append(Issue(("config", "CASEOPS_ENABLED"), f"no data variant {variant} here (data variants "
                                f"{', '.join(settings.data_variant_choices)}): CaseOps data is not served by this deployment", True))
        elif variant not in settings.data_variant_choices:
            sizes = ", ".join(v.removeprefix("sp") for v in settings.data_variant_choices)
            issues.append(Issue(("config", "VOCAB_SIZE"), f"no data variant {variant} here: VOCAB_SIZE must be one of {sizes} "
                                f"(data variants {', '.join(settings.data_variant_choices)})", cfg.vocab_size))  # fmt: skip
        if spec.abort_if_behind is not None:
            issues += unlogged_step(cfg, spec.abort_if_behind.step)
    if not issues and not spec.allow_noncompliant:
        issues += [
            Issue(("config", p.knob), f"{p.reason}; set allow_noncompliant: true to run it anyway (its results will not count for the track)", p.value)
            for p in spec_noncompliance(config, spec.track)
        ]
    if issues:
        raise InvalidInput(issues)
    return NormalisedSpec(config=config, track=spec.track, hardware=spec.hardware, allow_noncompliant=spec.allow_noncompliant, trainer=cfg), seeds


def _is_script(spec: RunCreate) -> bool:
    """A spec that names a script, or any of a script run's fields (which then must name one)."""
    return spec.script is not None or bool(spec.files) or bool(spec.env) or spec.data is not None or spec.score_label is not None or bool(spec.public_env) or spec.environment is not None


def _normalise_script(spec: RunCreate, settings: Settings, issues: list[Issue]) -> NormalisedSpec:
    """A team's own train_gpt.py: its files by sha256, its env and data variant (service.runs.scripts.spec)."""
    if spec.config:
        issues.append(Issue(("config",), "a script run takes env, not config (config holds the shared trainer's knobs)", sorted(spec.config)))
    limits = ScriptLimits(
        file_bytes=settings.max_script_file_bytes, total_bytes=settings.max_script_total_bytes, files=settings.max_script_files,
        env_vars=settings.max_script_env_vars, env_value_chars=settings.max_script_env_value_chars, variants=settings.data_variant_choices,
    )  # fmt: skip
    try:
        script, blobs = check_script_spec(spec.script, [(f.name, f.content) for f in spec.files], spec.env, spec.data, limits,
                                          score_label=spec.score_label, public_env=spec.public_env,
                                          environment=spec.environment.model_dump(exclude_defaults=True) if spec.environment else None)
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
