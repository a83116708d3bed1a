"""What a script run's spec may say, checked (pure: plain values in, plain values out).

::

    script (base64)  files [{name, content}]  env {NAME: value}  public_env [NAME]  data sp1024
        │  decode, size limits, file names inside the run folder, env names not reserved
        ▼
    ScriptSpec  ──to_json()──▶  runs.spec / run_groups.config (and so the group key):
        {"data": "sp1024", "env": {"NUM_LAYERS": "11"}, "files": {"helper.py": <sha256>}, "script": <sha256>}
    + the bytes by sha256, for service.runs.scripts.files to store

The script always runs as ``train_gpt.py`` in a fresh run folder (a records folder
ships it under that name, and the code bytes a script counts are its own file's,
whatever it was called). ``files`` sit beside it under their relative names; ``data``
is caddie's link to the node's data root.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import InvalidInput, Issue
from service.core.models import SCRIPT_KIND
from service.runs.scripts.environment import normal_environment
from trainer.recipes import PATH_VARS, Recipe, RecipeError, data_path_problem, resolve

SCRIPT_NAME = "train_gpt.py"
DEFAULT_VARIANT = "sp1024"

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
ENV_NAME_MAX_CHARS = 128
# One part of a file's relative path: no leading dot (no '.', '..' or hidden files), no separators.
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
FILE_NAME_MAX_CHARS = 200
FILE_NAME_MAX_PARTS = 4

_TORCHRUN = "set by torchrun for each process"
_VARIANT = "set by caddie from data (the run's data variant); a spec names it only where its data's recipe lets it (sp8192_caseops)"
RESERVED_ENV: dict[str, str] = {
    "SEED": "set the seed with seeds/seed; caddie passes it as SEED",
    "RUN_ID": "set by caddie (the run's id)",
    "DATA_PATH": _VARIANT,
    "TOKENIZER_PATH": _VARIANT,
    "OUTPUT_DIR": "set by caddie (the run folder)",
    **dict.fromkeys(("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                     "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT"), _TORCHRUN),
    **dict.fromkeys(("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"),
                    "the node's own; a run does not change it"),
}  # fmt: skip
RESERVED_PREFIXES: dict[str, str] = {
    "LD_": "LD_* steers the dynamic loader; refused",
    "PYTHON": "PYTHON* changes how Python starts and imports; refused",
    "TORCHELASTIC_": _TORCHRUN,
    "CADDIE_": "caddie's own settings",
    "SKYPILOT_": "SkyPilot's own settings",
}
# Top-level names of the run folder that are the launcher's, not a file's.
RESERVED_FILE_NAMES = {
    SCRIPT_NAME: "the script itself runs as train_gpt.py",
    "data": "caddie links the node's data here",
    "stdout.log": "the run's log",
    "child.json": "the launcher's", "exit_code.json": "the launcher's", "cancel_requested": "the launcher's",
}  # fmt: skip


@dataclass(frozen=True)
class ScriptLimits:
    """Bounds on what one spec may upload (service settings CADDIE_MAX_SCRIPT_*)."""

    file_bytes: int
    total_bytes: int
    files: int
    env_vars: int
    env_value_chars: int
    variants: Sequence[str]


@dataclass(frozen=True)
class ScriptSpec:
    """A script run's normal form: what runs, by content."""

    script_sha256: str
    files: Mapping[str, str]  # relative name -> sha256, sorted by name
    env: Mapping[str, str]  # sorted by name
    data: str
    score_label: str | None = None  # a regex for the score line's label, for a log format caddie does not read yet
    public_env: tuple[str, ...] = ()  # env names whose values other teams may see (a published group); the rest stay the team's
    # its own Python environment (service.runs.scripts.environment), by file name; {}: the node's own Python
    environment: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"data": self.data, "env": dict(self.env), "files": dict(self.files), "script": self.script_sha256}
        if self.score_label is not None:  # only when set: older specs keep their JSON (and content hash)
            d["score_label"] = self.score_label
        if self.public_env:
            d["public_env"] = list(self.public_env)
        if self.environment:  # only when declared, as score_label
            d["environment"] = dict(self.environment)
        return d

    def shared(self) -> ScriptSpec:
        """This spec as anyone but its team sees it: env values not marked public replaced by PRIVATE_VALUE."""
        env = {k: v if k in self.public_env else PRIVATE_VALUE for k, v in self.env.items()}
        return ScriptSpec(self.script_sha256, self.files, env, self.data, self.score_label, self.public_env, self.environment)

    def describe(self) -> str:
        """One line for tables and groups: ``own train_gpt.py 1a2b3c4d5e6f data=sp8192 NUM_LAYERS=11 +1 file``.

        Groups are shown to other teams once published, so env values not marked public never appear here."""
        words = [f"own {SCRIPT_NAME} {self.script_sha256[:12]}", f"data={self.data}"]
        words += [f"{k}={v}" for k, v in self.shared().env.items()]
        if self.files:
            words.append(f"+{len(self.files)} file{'s' if len(self.files) > 1 else ''}")
        if self.environment:
            words.append("own env" + (f" python {self.environment['python']}" if self.environment.get("python") else ""))
        return " ".join(words)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ScriptSpec:
        return cls(script_sha256=str(d["script"]), files=dict(d.get("files") or {}), env=dict(d.get("env") or {}),
                   data=str(d.get("data") or DEFAULT_VARIANT), score_label=d.get("score_label"),
                   public_env=tuple(d.get("public_env") or ()), environment=dict(d.get("environment") or {}))


PRIVATE_VALUE = "(private)"  # what other teams see of an env value its team did not mark public


def shared_config(kind: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A group's config as other teams see it: a script group's private env values hidden; knobs of the shared trainer as they are."""
    if kind != SCRIPT_KIND or not config:
        return dict(config or {})
    return ScriptSpec.from_json(config).shared().to_json()


SCORE_LABEL_CHARS = 200


def score_label_problem(pattern: str) -> str | None:
    """Why a spec's score_label cannot name a score line's label, or None."""
    if not pattern or len(pattern) > SCORE_LABEL_CHARS:
        return f"must be 1 to {SCORE_LABEL_CHARS} characters, got {len(pattern)}"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"is not a regular expression: {exc}"
    return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def env_name_problem(name: str) -> str | None:
    """Why ``name`` may not be set by a script run's env, or None."""
    if not ENV_NAME.match(name):
        return "names are [A-Z_][A-Z0-9_]* (upper-case letters, digits, '_'; not starting with a digit)"
    if len(name) > ENV_NAME_MAX_CHARS:
        return f"at most {ENV_NAME_MAX_CHARS} characters"
    if name in RESERVED_ENV:
        return f"reserved: {RESERVED_ENV[name]}"
    for prefix, why in RESERVED_PREFIXES.items():
        if name.startswith(prefix):
            return f"reserved ({prefix}*): {why}"
    return None


def path_env_problem(name: str, value: str, recipe: Recipe | None) -> str | None:
    """Why a spec may not set DATA_PATH/TOKENIZER_PATH to ``value``, or None: only where its data's
    recipe lets it, and only inside ./data (the run's link to the recipe's data folder)."""
    if recipe is None or not recipe.paths_settable:
        return env_name_problem(name)
    problem = data_path_problem(value)
    return None if problem is None else f"{problem} (data {recipe.variant} puts its data there)"


def env_value(value: Any) -> str:
    """A YAML/JSON scalar as the text an env var holds (booleans 1/0, as the challenge's scripts read them)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file of the run folder, or None: a relative path that stays inside it."""
    if not name:
        return "must not be empty"
    if len(name) > FILE_NAME_MAX_CHARS:
        return f"at most {FILE_NAME_MAX_CHARS} characters"
    if name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return "must be a relative path inside the run folder (no leading '/', no '\\', no drive)"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "must stay inside the run folder: no '..', '.' or empty parts"
    if len(parts) > FILE_NAME_MAX_PARTS:
        return f"at most {FILE_NAME_MAX_PARTS} levels of folders"
    if not all(_PART.match(p) for p in parts):
        return "each part is letters, digits, '_', '.', '+', '-' and does not start with '.'"
    if parts[0] in RESERVED_FILE_NAMES:
        return f"{parts[0]!r} is reserved: {RESERVED_FILE_NAMES[parts[0]]}"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode(content: str, loc: tuple[str | int, ...], issues: list[Issue]) -> bytes | None:
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        issues.append(Issue(loc, "must be the file's bytes in base64", None))
        return None


def check_script_spec(
    script: str | None,
    files: Sequence[tuple[str, str]],
    env: Mapping[str, Any],
    data: str | None,
    limits: ScriptLimits,
    score_label: str | None = None,
    public_env: Sequence[str] = (),
    environment: Any = None,
) -> tuple[ScriptSpec, dict[str, bytes]]:
    """The normal form of a script run's parts and the bytes to store by sha256.

    ``script`` and each file's content are base64; ``files`` is (name, content) pairs.
    Raises InvalidInput with one issue per problem, each at its field.
    """
    issues: list[Issue] = []
    blobs: dict[str, bytes] = {}
    total = 0
    if script is None:
        issues.append(Issue(("script",), "files, env and data belong to a script run: give the script", None))
        script_sha = ""
    else:
        raw = _decode(script, ("script",), issues)
        script_sha = ""
        if raw is not None:
            if not raw:
                issues.append(Issue(("script",), "the script is empty", 0))
            elif len(raw) > limits.file_bytes:
                issues.append(Issue(("script",), f"the script is {len(raw):,} bytes; the limit is {limits.file_bytes:,} bytes per file", len(raw)))
            else:
                script_sha = sha256_hex(raw)
                blobs[script_sha] = raw
                total += len(raw)

    if len(files) > limits.files:
        issues.append(Issue(("files",), f"at most {limits.files} files, got {len(files)}", len(files)))
    named: dict[str, str] = {}
    for i, (name, content) in enumerate(files):
        problem = file_name_problem(name)
        if problem is None and name in named:
            problem = "another file has this name"
        if problem is None and any(other.startswith(name + "/") or name.startswith(other + "/") for other in named):
            problem = "a file and a folder of the same name"
        if problem is not None:
            issues.append(Issue(("files", i, "name"), problem, name))
            continue
        raw = _decode(content, ("files", i, "content"), issues)
        if raw is None:
            continue
        if len(raw) > limits.file_bytes:
            issues.append(Issue(("files", i, "content"), f"{name} is {len(raw):,} bytes; the limit is {limits.file_bytes:,} bytes per file", len(raw)))
            continue
        sha = sha256_hex(raw)
        named[name] = sha
        if sha not in blobs:
            blobs[sha] = raw
            total += len(raw)
    if total > limits.total_bytes:
        issues.append(Issue(("files",), f"the script and its files are {total:,} bytes together; the limit is {limits.total_bytes:,} bytes", total))

    variant = DEFAULT_VARIANT if data is None else data
    recipe: Recipe | None = None
    if variant not in limits.variants:
        issues.append(Issue(("data",), f"must be one of {', '.join(limits.variants)} (the data variants this caddie serves)", data))
    else:
        try:
            recipe = resolve(variant)
        except RecipeError as exc:
            issues.append(Issue(("data",), str(exc), data))
    if recipe is not None:
        missing = [n for n in recipe.run_files() if n not in named]
        if missing:
            issues.append(Issue(("files",), f"data {variant} is built by the run's own files: add {', '.join(missing)}", missing))

    if len(env) > limits.env_vars:
        issues.append(Issue(("env",), f"at most {limits.env_vars} variables, got {len(env)}", len(env)))
    values: dict[str, str] = {}
    for name, value in env.items():
        text = env_value(value)
        problem = path_env_problem(name, text, recipe) if name in PATH_VARS else env_name_problem(name)
        if problem is None and len(text) > limits.env_value_chars:
            problem = f"the value is {len(text):,} characters; the limit is {limits.env_value_chars:,}"
        if problem is None and "\x00" in text:
            problem = "the value must not contain NUL (\\x00) characters"
        if problem is None and not _encodable(text):
            problem = "the value must be valid Unicode text (found a lone surrogate)"
        if problem is not None:
            issues.append(Issue(("env", name), problem, name))
        else:
            values[name] = text

    if score_label is not None:
        problem = score_label_problem(score_label)
        if problem:
            issues.append(Issue(("score_label",), problem, score_label[:SCORE_LABEL_CHARS]))
    for name in public_env:
        if name not in env:
            issues.append(Issue(("public_env",), f"{name!r} is not one of this spec's env names", name))
    declared = normal_environment(environment, {name: blobs[sha] for name, sha in named.items()}, issues)
    if issues:
        raise InvalidInput(issues)
    spec = ScriptSpec(script_sha256=script_sha, files=dict(sorted(named.items())), env=dict(sorted(values.items())), data=variant,
                      score_label=score_label, public_env=tuple(sorted(set(public_env))), environment=declared)
    return spec, blobs
