"""Run spec files (YAML) for ``caddie submit``: read, apply command-line
overrides, and produce the body of ``POST /api/v1/runs``.

A spec file looks like::

    name: baseline-11L
    notes: seed stack, three seeds
    team: golfers            # optional when you belong to one team
    track: 10min_16mb        # or unlimited
    hardware: H100:8
    priority: 0
    config: {NUM_LAYERS: 11, XSA_LAST_N: 4}
    seeds: [1337, 42, 2025]
    abort_if_behind: {step: 1000, margin: 0.02}   # optional: stop it early when clearly behind

or, for a team's own challenge-format script instead of ``config``::

    script: records/my_run/train_gpt.py      # relative to this file
    files: [records/my_run/helper.py]        # beside the script; named relative to its folder
    env: {NUM_LAYERS: 11, TTT_ENABLED: 1}
    public_env: [NUM_LAYERS]                 # values other teams may see once published
    data: sp1024
    score_label: my_eval_exact               # optional: the score line of a log format caddie does not read yet
    environment: {requirements: requirements.txt, python: "3.12", system_packages: [lrzip], node_packages: true}   # optional

The server validates the contents (knobs, bounds, seeds, script limits); this
module only makes sure the file is readable YAML of the right shape, and reads
the script's files to upload them with the spec.
"""

from __future__ import annotations

import base64
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from cli.client import CaddieError

# The body's fields (service/runs/schemas.py RunCreate); tests/cli/test_cli_spec_keys.py checks they match.
SPEC_KEYS = ("name", "notes", "team", "track", "hardware", "priority", "config", "seeds", "seed", "allow_noncompliant",
             "abort_if_behind", "script", "files", "env", "public_env", "data", "score_label", "environment")


def read_spec_file(path: Path) -> dict[str, Any]:
    """The spec file as a mapping; CaddieError naming the file (and the line) otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CaddieError(f"spec file {path} not found") from None
    except IsADirectoryError:
        raise CaddieError(f"spec file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaddieError(f"cannot read spec file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise CaddieError(f"spec file {path}: invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise CaddieError(f"spec file {path}: expected a mapping of {', '.join(SPEC_KEYS)}, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in SPEC_KEYS)
    if unknown:
        raise CaddieError(f"spec file {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SPEC_KEYS)}")
    if data.get("config") is None:
        data["config"] = {}
    if not isinstance(data["config"], dict):
        raise CaddieError(f"spec file {path}: config must be a mapping of KNOB: value")
    # YAML reads an unquoted STACK: 2026-04-27 as a date; the knob is the preset's name.
    data["config"] = {k: v.isoformat() if isinstance(v, date) else v for k, v in data["config"].items()}
    if data.get("env") is not None and not isinstance(data["env"], dict):
        raise CaddieError(f"spec file {path}: env must be a mapping of NAME: value")
    files = data.get("files") or []
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise CaddieError(f"spec file {path}: files must be a list of paths")
    # Paths in the file are relative to it, wherever caddie is run from.
    if data.get("script") is not None:
        data["script"] = str(path.parent / str(data["script"]))
    data["files"] = [str(path.parent / f) for f in files]
    return data


def parse_seeds(text: str) -> list[int]:
    """``"1337,42,2025"`` -> [1337, 42, 2025]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CaddieError(f"--seeds must be comma-separated integers, got {text!r}") from None


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["NUM_LAYERS=11", "TTT_ENABLED=true"]`` -> {"NUM_LAYERS": 11, "TTT_ENABLED": True}
    (values read as YAML scalars, so numbers and booleans keep their type)."""
    out: dict[str, Any] = {}
    for item in items:
        knob, sep, raw = item.partition("=")
        knob = knob.strip()
        if not sep or not knob:
            raise CaddieError(f"--set expects KNOB=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list, date)):
            value = raw  # a knob is a scalar, and STACK=2026-04-27 is a name, not a date: let the server judge the text
        out[knob] = value
    return out


def parse_env(items: list[str]) -> dict[str, str]:
    """``["NUM_LAYERS=11", "NOTE=a b"]`` -> {"NUM_LAYERS": "11", "NOTE": "a b"} (values kept as text)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CaddieError(f"--env expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value
    return out


def read_upload(path: Path, what: str) -> str:
    """A file's bytes in base64, for the spec's script or files; CaddieError naming the path."""
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except FileNotFoundError:
        raise CaddieError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise CaddieError(f"{what} {path} is a directory; name its files") from None
    except OSError as exc:
        raise CaddieError(f"cannot read {what} {path}: {exc}") from None


def script_upload(script: Path, files: list[Path]) -> dict[str, Any]:
    """The spec's script and files fields: each file named by its path relative to the
    script's folder (where the run folder puts it); CaddieError for one outside it."""
    folder = script.resolve().parent
    uploads = []
    for f in files:
        resolved = f.resolve()
        if not resolved.is_relative_to(folder):
            raise CaddieError(f"file {f} is not inside the script's folder {folder}: the run folder holds the script and the files beside it")
        uploads.append({"name": resolved.relative_to(folder).as_posix(), "content": read_upload(f, "file")})
    return {"script": read_upload(script, "script"), "files": uploads}


def build_request(spec: dict[str, Any], *, seeds: str | None = None, team: str | None = None, overrides: list[str] | None = None,
                  script: Path | None = None, files: list[Path] | None = None, env: list[str] | None = None,
                  data: str | None = None) -> dict[str, Any]:
    """The POST /runs body: the file's fields with --seeds, --team and --set applied; a
    script (--script, or the file's script:) read and sent with its files and env."""
    body = {k: v for k, v in spec.items() if v is not None and k not in ("script", "files")}
    body["config"] = dict(spec.get("config") or {})
    if seeds is not None:
        body.pop("seed", None)
        body["seeds"] = parse_seeds(seeds)
    if team is not None:
        body["team"] = team
    body["config"].update(parse_set(overrides or []))
    script_path = script or (Path(spec["script"]) if spec.get("script") else None)
    all_files = [Path(f) for f in spec.get("files") or []] + list(files or [])
    if script_path is None and (all_files or env or data):
        raise CaddieError("--file, --env and --data belong to a script run: name the script (--script PATH or script: in the spec file)")
    if script_path is not None:
        environment = spec.get("environment")
        req = environment.get("requirements") if isinstance(environment, dict) else None
        if isinstance(req, str) and (script_path.parent / req).resolve() not in {f.resolve() for f in all_files}:
            all_files.append(script_path.parent / req)  # the environment's requirements file travels with the script
        body.update(script_upload(script_path, all_files))
        body["env"] = {**(spec.get("env") or {}), **parse_env(env or [])}
        if data is not None:
            body["data"] = data
    return body
