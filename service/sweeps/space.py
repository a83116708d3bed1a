"""A sweep's search space: per knob a list of values, or a range (linear or log).

    space:
      MATRIX_LR: {low: 0.02, high: 0.08, log: true}     # a range; grid needs steps: N
      NUM_LAYERS: {values: [9, 10, 11]}

Each value, and both ends of a range, must pass the trainer's own bounds for the knob
(trainer.config), merged with the sweep's base config, so a trial can never be refused
at submission for a value the space allowed. Int knobs take int ranges; bool and str
knobs take values only. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.core.errors import InvalidInput, Issue
from service.runs.scripts.spec import env_name_problem, env_value
from service.runs.spec import normalise_config
from trainer.config import TrainerConfig

MAX_KNOBS = 12
MAX_VALUES = 64  # per knob, listed or a grid range's steps
MAX_GRID = 10_000  # points of a whole grid (max_trials caps what runs)


@dataclass(frozen=True)
class Knob:
    """One searched knob: ``values`` (a categorical), or a range ``low..high`` (log-spaced if ``log``)."""

    name: str  # env name, e.g. MATRIX_LR
    kind: str  # "int" | "float" | "bool" | "str", as trainer.config types it
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    steps: int | None = None  # grid points of a range

    def grid(self) -> list[Any]:
        """The values a grid visits: the listed ones, or ``steps`` points spaced evenly (in log if ``log``)."""
        if self.values is not None:
            return list(self.values)
        assert self.low is not None and self.high is not None and self.steps
        if self.steps == 1:
            points = [self.low]
        elif self.log:
            a, b = math.log(self.low), math.log(self.high)
            points = [math.exp(a + (b - a) * i / (self.steps - 1)) for i in range(self.steps)]
        else:
            points = [self.low + (self.high - self.low) * i / (self.steps - 1) for i in range(self.steps)]
        if self.kind == "int":
            return sorted({int(round(p)) for p in points})
        return [float(f"{p:.6g}") for p in points]

    def contains(self, value: Any) -> bool:
        if self.values is not None:
            return value in self.values
        assert self.low is not None and self.high is not None
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def to_json(self) -> dict[str, Any]:
        if self.values is not None:
            return {"values": list(self.values)}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.steps is not None:
            out["steps"] = self.steps
        return out


@dataclass(frozen=True)
class SearchSpace:
    knobs: tuple[Knob, ...]

    def grid(self) -> list[dict[str, Any]]:
        """Every combination, in a fixed order (the first knob varies slowest)."""
        names = [k.name for k in self.knobs]
        return [dict(zip(names, combo)) for combo in itertools.product(*(k.grid() for k in self.knobs))]

    def grid_size(self) -> int | None:
        """Points of the grid; None if a range has no ``steps`` (no grid)."""
        if any(k.values is None and not k.steps for k in self.knobs):
            return None
        return math.prod(len(k.grid()) for k in self.knobs)

    def contains(self, params: Mapping[str, Any]) -> bool:
        return set(params) == {k.name for k in self.knobs} and all(k.contains(params[k.name]) for k in self.knobs)

    def to_json(self) -> dict[str, Any]:
        return {k.name: k.to_json() for k in self.knobs}


def _kinds() -> dict[str, tuple[str, dataclasses.Field]]:
    types = {"bool": "bool", "int": "int", "float": "float", "str": "str", bool: "bool", int: "int", float: "float", str: "str"}
    out = {}
    for f in TrainerConfig.knobs():
        out[TrainerConfig.env_name(f)] = (types.get(f.type, "str"), f)
        out[f.name] = out[TrainerConfig.env_name(f)]
    return out


def _knob_issue(base: Mapping[str, Any], name: str, value: Any, loc: tuple[str | int, ...]) -> Issue | None:
    """Why a run spec with ``value`` for knob ``name`` over the base config would be refused, or None
    (the submission's own check, service.runs.spec.normalise_config: trainer bounds, reserved knobs)."""
    try:
        normalise_config({**base, name: value})
    except InvalidInput as exc:
        mine = [i for i in exc.issues if i.loc[-1] == name]
        if mine:
            return Issue(loc, f"{name}={value!r}: {mine[0].msg}", value)
        other = exc.issues[0]  # a cross-knob rule about another knob (e.g. XSA_LAST_N must be <= NUM_LAYERS)
        return Issue(loc, f"{name}={value!r}: {other.loc[-1]} {other.msg}", value)
    return None


def parse_space(raw: Mapping[str, Any], base: Mapping[str, Any]) -> SearchSpace:
    """Check a space against trainer.config and the sweep's ``base`` (normalised knobs keyed by env name).

    Raises InvalidInput with one issue per bad knob or value at ``("space", KNOB, ...)``.
    """
    issues = _count_issues(raw, "knob")
    kinds = _kinds()
    knobs: list[Knob] = []
    for key, spec in raw.items():
        loc: tuple[str | int, ...] = ("space", key)
        if key not in kinds:
            issues.append(Issue(loc, "unknown knob (see GET /api/v1/config/schema)", key))
            continue
        kind, f = kinds[key]
        name = TrainerConfig.env_name(f)
        if name in base:
            issues.append(Issue(loc, f"{name} is also set in base; a searched knob is set by the sweep only", base[name]))
            continue
        knob = _parse_knob(name, kind, f, spec, base, loc, issues)
        if knob is not None:
            knobs.append(knob)
    return _space(knobs, issues)


def _parse_knob(name: str, kind: str, f: dataclasses.Field, spec: Any, base: Mapping[str, Any],
                loc: tuple[str | int, ...], issues: list[Issue]) -> Knob | None:  # fmt: skip
    if bad := _shape_issue(spec, loc):
        issues.append(bad)
        return None
    if "values" in spec:
        values = spec["values"]
        coerced = []
        for i, v in enumerate(values):
            bad = _knob_issue(base, name, v, (*loc, "values", i))
            if bad:
                issues.append(bad)
            else:
                coerced.append(TrainerConfig.from_dict({**base, name: v}).to_dict()[f.name])  # the knob's type (checked just above)
        if len(set(map(repr, coerced))) != len(coerced) and len(coerced) == len(values):
            issues.append(Issue((*loc, "values"), "values must be unique", values))
        return Knob(name, kind, values=tuple(coerced)) if len(coerced) == len(values) else None
    if kind not in ("int", "float"):
        issues.append(Issue(loc, f"{name} is a {kind} knob: list its values ({{values: [...]}}), a range needs a number", dict(spec)))
        return None
    checked = _range(spec, loc, issues, int_knob=name if kind == "int" else None)
    if checked is None:
        return None
    low, high, log, steps = checked
    found = False
    for end, value in (("low", low), ("high", high)):
        bad = _knob_issue(base, name, int(value) if kind == "int" else float(value), (*loc, end))
        if bad:
            issues.append(bad)
            found = True
    if found:
        return None
    cast = int if kind == "int" else float
    return Knob(name, kind, low=cast(low), high=cast(high), log=log, steps=steps)


def parse_env_space(raw: Mapping[str, Any], base_env: Mapping[str, Any]) -> SearchSpace:
    """A script sweep's space: each key an env variable of the team's train_gpt.py, named as a script run's env
    names are (service.runs.scripts.spec.env_name_problem). Nothing is known of the script's bounds, so any
    ``values`` list of scalars, or a numeric range (an int range when both ends are ints), is taken; a trial's
    values reach the script as text (env_value). A trainer knob's name (MATRIX_LR) is simply an env variable
    here: the challenge's scripts read the same names, and caddie does not check the trainer's bounds for them.

    Raises InvalidInput with one issue per bad key or value at ``("space", NAME, ...)``.
    """
    issues = _count_issues(raw, "env variable")
    knobs: list[Knob] = []
    for key, spec in raw.items():
        loc: tuple[str | int, ...] = ("space", key)
        problem = env_name_problem(key)
        if problem is not None:
            issues.append(Issue(loc, f"not an env name a script run may set: {problem}", key))
            continue
        if key in base_env:
            issues.append(Issue(loc, f"{key} is also set in env; a searched variable is set by the sweep only", base_env[key]))
            continue
        knob = _parse_env_knob(key, spec, loc, issues)
        if knob is not None:
            knobs.append(knob)
    return _space(knobs, issues)


def _parse_env_knob(name: str, spec: Any, loc: tuple[str | int, ...], issues: list[Issue]) -> Knob | None:
    if shape := _shape_issue(spec, loc):
        issues.append(shape)
        return None
    if "values" in spec:
        values = spec["values"]
        if bad := [i for i, v in enumerate(values) if not isinstance(v, (str, int, float, bool)) or _not_finite(v)]:
            issues.append(Issue((*loc, "values", bad[0]), "must be a string, a number or true/false", values[bad[0]]))
        elif len({env_value(v) for v in values}) != len(values):
            issues.append(Issue((*loc, "values"), "values must be unique (as the text the script reads)", values))
        else:
            return Knob(name, "str", values=tuple(values))
        return None
    checked = _range(spec, loc, issues)
    if checked is None:
        return None
    low, high, log, steps = checked
    if isinstance(low, int) and isinstance(high, int):  # ints stay ints (a step count, a layer count)
        return Knob(name, "int", low=low, high=high, log=log, steps=steps)
    return Knob(name, "float", low=float(low), high=float(high), log=log, steps=steps)


def _count_issues(raw: Mapping[str, Any], noun: str) -> list[Issue]:
    """A space names at least one and at most MAX_KNOBS of ``noun``s (a trainer knob, an env variable)."""
    if not raw:
        raise InvalidInput([Issue(("space",), f"must name at least 1 {noun}", raw)])
    return [Issue(("space",), f"at most {MAX_KNOBS} {noun}s, got {len(raw)}", len(raw))] if len(raw) > MAX_KNOBS else []


def _space(knobs: list[Knob], issues: list[Issue]) -> SearchSpace:
    """The space of the parsed ``knobs``, unless a knob had an issue or the grid is too large."""
    if issues:
        raise InvalidInput(issues)
    space = SearchSpace(tuple(knobs))
    size = space.grid_size()
    if size is not None and size > MAX_GRID:
        raise InvalidInput([Issue(("space",), f"the grid has {size} points; at most {MAX_GRID}", size)])
    return space


def _shape_issue(spec: Any, loc: tuple[str | int, ...]) -> Issue | None:
    """What is wrong with one knob's spec before its values are read (the same for a trainer knob and an env
    variable): not a mapping, unknown fields, values beside a range, values not a list of 1 to MAX_VALUES."""
    if not isinstance(spec, Mapping):
        return Issue(loc, "must be {values: [...]} or {low: L, high: H, log: bool}", spec)
    extra = set(spec) - {"values", "low", "high", "log", "steps"}
    if extra:
        return Issue(loc, f"unknown field(s) {', '.join(sorted(extra))}; use values, or low/high/log/steps", sorted(extra))
    if "values" not in spec:
        return None
    values = spec["values"]
    if set(spec) - {"values"}:
        return Issue(loc, "give values, or a range (low/high), not both", dict(spec))
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        return Issue((*loc, "values"), "must be a non-empty list", values)
    if len(values) > MAX_VALUES:
        return Issue((*loc, "values"), f"at most {MAX_VALUES} values, got {len(values)}", len(values))
    return None


def _range(spec: Mapping[str, Any], loc: tuple[str | int, ...], issues: list[Issue], *, int_knob: str | None = None) -> tuple[Any, Any, bool, Any] | None:
    """(low, high, log, steps) of a range, each checked (ends finite numbers, integers for an int knob, low < high, log a
    boolean and low > 0 for it, steps a count), or None with the first problem added to ``issues``: a trainer knob's
    range and a script's env range are the same shape."""
    if "low" not in spec or "high" not in spec:
        issues.append(Issue(loc, "a range needs low and high", dict(spec)))
        return None
    low, high, log, steps = spec["low"], spec["high"], spec.get("log", False), spec.get("steps")
    for end, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or _not_finite(value):
            issues.append(Issue((*loc, end), "must be a finite number", value))
            return None
        if int_knob is not None and not float(value).is_integer():
            issues.append(Issue((*loc, end), f"{int_knob} is an int knob: must be an integer", value))
            return None
    if not low < high:
        issues.append(Issue((*loc, "high"), f"must be > low ({low})", high))
        return None
    if not isinstance(log, bool):
        issues.append(Issue((*loc, "log"), "must be true or false", log))
        return None
    if log and low <= 0:
        issues.append(Issue((*loc, "low"), "a log range must have low > 0", low))
        return None
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_VALUES):
        issues.append(Issue((*loc, "steps"), f"must be an integer >= 1 and <= {MAX_VALUES}", steps))
        return None
    return low, high, log, steps


def _not_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (abs(value) > 1e300 or not math.isfinite(value))


def space_of(spec: Mapping[str, Any]) -> SearchSpace:
    """A stored sweep's space: env variables for a script sweep (``kind: script``), trainer knobs otherwise."""
    if spec.get("kind") == "script":
        return parse_env_space(spec["space"], spec["base"].get("env") or {})
    return parse_space(spec["space"], spec["base"])
