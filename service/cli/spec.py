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

The server validates the contents (knobs, bounds, seeds); this module only
makes sure the file is readable YAML of the right shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.cli.client import CaddieError

SPEC_KEYS = ("name", "notes", "team", "track", "hardware", "priority", "config", "seeds", "seed", "allow_noncompliant")


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
        if isinstance(value, (dict, list)):
            value = raw  # a knob is a scalar; let the server judge the text
        out[knob] = value
    return out


def build_request(spec: dict[str, Any], *, seeds: str | None = None, team: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The POST /runs body: the file's fields with --seeds, --team and --set applied."""
    body = {k: v for k, v in spec.items() if v is not None}
    body["config"] = dict(spec.get("config") or {})
    if seeds is not None:
        body.pop("seed", None)
        body["seeds"] = parse_seeds(seeds)
    if team is not None:
        body["team"] = team
    body["config"].update(parse_set(overrides or []))
    return body
