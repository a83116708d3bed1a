"""A group's records/ folder, ready for a pull request to the challenge (pure: plain values in, files out).

::

    ExportInput (the group's figures, checks, test, and each counted run's log and train_gpt.py)
        │
        ├─ records_files() ─▶ {"README.md": ..., "submission.json": ..., "train_seed1337.log": ...,
        │                      "train_gpt.py": ..., "requirements.txt": ...}   (file name -> bytes)
        └─ folder_name()   ─▶ records/track_10min_16mb/2026-03-23_XSA_11_BigramHash_3072

What a records/ folder holds (trainer-spec.md, section 1): README.md, submission.json,
one train log per seed as the trainer wrote it, train_gpt.py (all counted code in one
file), and requirements. A group that is not record-eligible (a failed or
not-comparable check, or no significant gain over a baseline) exports only with an
override reason, which is then written into README.md and submission.json.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import math
import re
import shlex
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from service.core.errors import Conflict
from service.results.groups import Eligibility, GroupStats, SeedRow, config_diff
from service.results.rules import Check, RuleSummary, Verdict
from service.results.statistics import Comparison, finite_or_none as _finite
from service.runs.scripts.environment import describe, normal_name, requirements_from_declaration
from service.runs.scripts.spec import ScriptSpec

OVERRIDE_MAX_CHARS = 500
LOG_STORED = "stored"  # the run's train.log, byte for byte
LOG_DATABASE = "database"  # rebuilt from caddie's copy of the log (the stored file was missing)
# Import names whose PyPI distribution has another name. flash_attn_interface is FlashAttention 3's
# Hopper build, the flash_attn_3 wheel the records install from its wheel index.
DISTRIBUTIONS = {"yaml": "PyYAML", "PIL": "Pillow", "sklearn": "scikit-learn", "cv2": "opencv-python",
                 "flash_attn_interface": "flash_attn_3", "sentencepiece": "sentencepiece", "zstandard": "zstandard"}
FA3_INDEX = "https://windreamer.github.io/flash-attention3-wheels/cu128_torch291"


@dataclass(frozen=True)
class SeedFiles:
    """One counted run's own files: its log and the bundled trainer it ran."""

    log: bytes
    train_gpt: bytes
    log_source: str = LOG_STORED


@dataclass(frozen=True)
class ExportInput:
    """Everything a records/ folder says about one group."""

    name: str  # the group's name
    group_key: str
    team: str
    author: str
    date: date
    track: str
    hardware: str
    config: Mapping[str, Any]  # non-default knobs keyed by env name
    stats: GroupStats  # counted runs, summaries, rule summaries
    eligibility: Eligibility
    files: Mapping[int, SeedFiles]  # by run id, one per counted run
    comparison: Comparison | None = None
    baseline_name: str | None = None
    baseline_key: str | None = None
    github_id: str | None = None
    override: str | None = None
    blurb: str | None = None
    script: ScriptSpec | None = None  # a group of the team's own train_gpt.py (config is then its ScriptSpec JSON)
    script_files: Mapping[str, bytes] = field(default_factory=dict)  # the files it needs beside it, by name
    hardware_ran: str | None = None  # what the runs reported, e.g. "8xNVIDIA H100 80GB HBM3" (never the spec)
    pytorch_version: str | None = None  # as the runs reported it
    # what each counted run's Python held (runs.environment: python, torch, cuda, flash_attn, packages), where recorded
    environments: Sequence[Mapping[str, Any]] = ()

    @property
    def what_runs(self) -> str:
        """The one-line description of what the group ran (README, blurb)."""
        return self.script.describe() if self.script else config_diff(self.config)

    @property
    def env(self) -> Mapping[str, Any]:
        """The variables a rerun sets: a script's env, or the trainer's changed knobs."""
        return self.script.env if self.script else self.config

    @property
    def rows(self) -> list[SeedRow]:
        """The counted runs in the order they were submitted."""
        return sorted(self.stats.counted, key=lambda r: r.run_id)


# --- the override --------------------------------------------------------------------
def override_problem(text: str | None) -> str | None:
    """Why ``text`` is not an acceptable override reason, or None when it is (or is absent)."""
    if text is None:
        return None
    if not text.strip():
        return "must not be empty"
    if len(text) > OVERRIDE_MAX_CHARS:
        return f"at most {OVERRIDE_MAX_CHARS} characters (got {len(text)})"
    # One line of plain text: it lands in a Markdown quote and a JSON string.
    if any(unicodedata.category(c) == "Cc" for c in text):
        return "must be one line without control characters (no newlines or tabs)"
    return None


def blocking_problems(stats: GroupStats, eligibility: Eligibility) -> list[str]:
    """Why the group is not record-eligible, one line each; empty when it is."""
    problems = [f"{r.rule} {_verdict_word(r.verdict)}: {_first_reason(r)}" for r in stats.rules
                if r.verdict not in (Verdict.PASS, Verdict.DECLARED)]  # a declaration is listed in the README, never blocks
    # The rule lines above say more than eligibility's "checks failed: a, b"; keep its other reasons.
    problems += [r for r in eligibility.reasons if not r.startswith(("checks failed", "checks not comparable"))]
    if not problems and not eligibility.eligible:
        problems.append("not record-eligible")
    return problems


def require_override(group: str, stats: GroupStats, eligibility: Eligibility, override: str | None) -> list[str]:
    """The blocking problems; Conflict when there are some and no override reason was given."""
    problems = blocking_problems(stats, eligibility)
    if problems and not (override and override.strip()):
        raise Conflict(f"group {group} is not record-eligible: {'; '.join(problems)}. "
                       'Pass --override "reason" (API: ?override=...) to export it anyway; the reason is written into README.md and submission.json')
    return problems


# --- names ----------------------------------------------------------------------------
def slug(text: str, max_chars: int = 60) -> str:
    """``XSA 11 + BigramHash(3072)`` -> ``XSA_11_BigramHash_3072``: ASCII letters, digits and '_'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9]+", "_", ascii_text).strip("_")[:max_chars].rstrip("_")


# caddie's track -> the challenge's folder under records/ (unlimited runs are its non-record submissions)
TRACK_FOLDERS = {"10min_16mb": "track_10min_16mb", "unlimited": "track_non_record_16mb"}


def folder_name(inp: ExportInput) -> str:
    """``records/<the challenge's track folder>/<YYYY-MM-DD>_<slug of the group name>``, as in its repository."""
    name = slug(inp.name) or f"group_{inp.group_key[:8]}"
    track = TRACK_FOLDERS.get(inp.track) or f"track_{slug(inp.track) or 'unknown'}"
    return f"records/{track}/{inp.date.isoformat()}_{name}"


def log_names(rows: Sequence[SeedRow]) -> dict[int, str]:
    """``train_seed<SEED>.log`` per run; a seed that two counted runs share gets the run id too."""
    seen: dict[int, int] = {}
    for r in rows:
        seen[r.seed] = seen.get(r.seed, 0) + 1
    return {r.run_id: f"train_seed{r.seed}.log" if seen[r.seed] == 1 else f"train_seed{r.seed}_run{r.run_id}.log" for r in rows}


# --- the files --------------------------------------------------------------------------
def records_files(inp: ExportInput) -> dict[str, bytes]:
    """The records/ folder's files in order: README.md, submission.json, one log per
    counted seed, train_gpt.py, requirements.txt.

    Conflict when the group is not record-eligible and no override reason is given,
    when a counted run's files are missing, or when the counted runs bundled
    different train_gpt.py files (a folder holds one trainer). An override given
    for an eligible group is not written anywhere: there is nothing to override.
    """
    problems = require_override(inp.group_key[:12], inp.stats, inp.eligibility, inp.override)
    if not problems and inp.override:
        # Nothing to override: an override_reason would tell reviewers the record breaks a rule.
        inp = replace(inp, override=None)
    rows = inp.rows
    if not rows:
        raise Conflict(f"group {inp.group_key[:12]} has no counted run to export")
    missing = [r.run_id for r in rows if r.run_id not in inp.files]
    if missing:
        raise Conflict(f"no log or train_gpt.py for run(s) {', '.join(map(str, missing))}")
    trainer = shared_trainer(rows, inp.files)
    names = log_names(rows)
    files: dict[str, bytes] = {
        "README.md": readme(inp, problems, names, trainer).encode("utf-8"),
        "submission.json": submission_json(inp),
    }
    for r in rows:
        files[names[r.run_id]] = inp.files[r.run_id].log
    files["train_gpt.py"] = trainer
    files.update(inp.script_files)
    files["requirements.txt"] = requirements_file(inp, trainer)
    return files


def requirements_file(inp: ExportInput, trainer: bytes) -> bytes:
    """requirements.txt: a declared environment's requirements pinned to what the runs had, with every
    other package they held (service.runs.scripts.environment); else what train_gpt.py imports, pinned
    where the runs reported a version (their environments', the trainer's torch)."""
    declared = describe(inp.script.environment, inp.script_files) if inp.script and inp.script.environment else None
    if declared is not None:
        return ("\n".join(requirements_from_declaration(declared, inp.environments)) + "\n").encode("utf-8")
    versions = agreed_versions(inp.environments)
    if inp.pytorch_version:
        versions.setdefault("torch", inp.pytorch_version)
    return requirements_txt(trainer, versions or None)


def agreed_versions(environments: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each package's version where every run that reported it had the same one."""
    seen: dict[str, set[str]] = {}
    for env in environments:
        for name, version in (env.get("packages") or {}).items():
            seen.setdefault(normal_name(str(name)), set()).add(str(version))
    return {name: next(iter(v)) for name, v in seen.items() if len(v) == 1}


def _said(environments: Sequence[Mapping[str, Any]], key: str) -> str | None:
    """What the runs' environments say of ``key`` (python, torch, cuda, flash_attn), joined when they differ."""
    said = list(dict.fromkeys(str(e[key]) for e in environments if e.get(key)))
    return ", ".join(said) or None


def shared_trainer(rows: Sequence[SeedRow], files: Mapping[int, SeedFiles]) -> bytes:
    """The one train_gpt.py every counted run bundled; Conflict naming the runs when they differ."""
    by_sha: dict[str, list[int]] = {}
    for r in rows:
        by_sha.setdefault(hashlib.sha256(files[r.run_id].train_gpt).hexdigest(), []).append(r.run_id)
    if len(by_sha) > 1:
        groups = "; ".join(f"sha256 {sha[:12]}: run(s) {', '.join(map(str, ids))}" for sha, ids in by_sha.items())
        raise Conflict(f"the counted runs bundled different train_gpt.py files (different trainer revisions): {groups}. "
                       "A records folder holds one train_gpt.py: rerun those seeds with one trainer revision")
    return files[rows[0].run_id].train_gpt


def submission_json(inp: ExportInput) -> bytes:
    """submission.json: the challenge's fields, then caddie's (val_loss, p_value, baseline, override_reason)."""
    rows, s, c = inp.rows, inp.stats, inp.comparison
    data: dict[str, Any] = {
        "name": inp.name,
        "author": inp.author,
        "github_id": inp.github_id,
        "date": inp.date.isoformat(),
        "track": inp.track,
        "val_bpb": _finite(s.val_bpb.mean),
        "val_bpb_std": _finite(s.val_bpb.std),
        "val_loss": _finite(s.val_loss.mean),
        "seeds": [r.seed for r in rows],
        # keyed by seed, as every record that has seed_results keys it (a seed two counted runs share: seed_run<id>)
        "seed_results": {
            key: {"val_bpb": _finite(r.val_bpb), "val_loss": _finite(r.val_loss), "artifact_bytes": r.artifact_bytes,
                  "steps": r.steps, "train_time_s": _finite(r.train_seconds), "eval_time_s": _finite(r.eval_seconds),
                  "pre_ttt_val_bpb": _finite(r.pre_ttt_bpb)}
            for key, r in seed_keys(rows).items()
        },
        # The largest seed's artifact, not the mean: every seed's artifact must fit under the limit.
        "bytes_total": s.max_artifact_bytes,
        "bytes_code": _max_int([r.code_bytes for r in rows]),
        "hardware": inp.hardware_ran,
        "pytorch_version": inp.pytorch_version or _said(inp.environments, "torch"),
        # what the runs' Python held (runs.environment), under the keys the records use
        "python_version": _said(inp.environments, "python"),
        "cuda_version": _said(inp.environments, "cuda"),
        "flash_attn_version": _said(inp.environments, "flash_attn"),
        # each rule as caddie checked it over the counted runs (declared: not verified, the team's word)
        "compliance": {rs.rule: {"verdict": rs.verdict.value, "runs": rs.counts, "reason": rs.reasons[0] if rs.reasons else ""}
                       for rs in s.rules},
        # every run of the configuration, so no seed is dropped silently
        "runs": {"counted": s.n, "run": s.n + len(s.excluded),
                 "not_counted": [{"run_id": e.run_id, "seed": e.seed, "status": e.status, "reason": e.reason} for e in s.excluded]},
        "p_value": _finite(c.p_value) if c else None,
        "baseline": {"name": inp.baseline_name, "group_key": inp.baseline_key} if inp.baseline_key else None,
        "blurb": inp.blurb or default_blurb(inp),
    }
    if inp.override:
        data["override_reason"] = inp.override
    return (json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def seed_keys(rows: Sequence[SeedRow]) -> dict[str, SeedRow]:
    """seed_results' keys: the seed, or ``<seed>_run<id>`` where two counted runs share one."""
    seen: dict[int, int] = {}
    for r in rows:
        seen[r.seed] = seen.get(r.seed, 0) + 1
    return {str(r.seed) if seen[r.seed] == 1 else f"{r.seed}_run{r.run_id}": r for r in rows}


def default_blurb(inp: ExportInput) -> str:
    s = inp.stats
    trainer = "the team's own train_gpt.py" if inp.script else "caddie's shared trainer"
    return (f"{inp.what_runs}. {s.n}-seed mean val_bpb {_num(s.val_bpb.mean, 4)} (std {_num(s.val_bpb.std, 4)}), "
            f"val_loss {_num(s.val_loss.mean, 4)}; largest artifact {_bytes(s.max_artifact_bytes)} bytes. "
            f"Trained on {inp.hardware} with {trainer}.")


def distribution(module: str) -> str:
    """The PyPI distribution that provides an import name: the known renames, else what this
    environment's installed packages say (importlib.metadata), else the name itself."""
    if module in DISTRIBUTIONS:
        return DISTRIBUTIONS[module]
    found = importlib.metadata.packages_distributions().get(module)
    return found[0] if found else module


def requirements_txt(script: bytes, versions: Mapping[str, str] | None = None) -> bytes:
    """The non-stdlib distributions train_gpt.py imports, pinned where the runs reported a
    version (``versions``: distribution or import name -> version), else unpinned and said so.
    Imports inside a ``try`` are optional (the script runs without them) and are listed as comments."""
    versions = {k.lower().replace("-", "_"): v for k, v in (versions or {}).items()}
    required, optional = script_imports(script)
    lines = ["# Distributions train_gpt.py imports beyond the standard library, pinned to what the runs reported."]
    unpinned = []
    for m in required:
        dist = distribution(m)
        version = versions.get(dist.lower().replace("-", "_")) or versions.get(m.lower())
        if dist == "flash_attn_3":
            lines.append(f"# flash_attn_3 comes from its wheel index: pip install flash_attn_3 --find-links {FA3_INDEX}")
        lines.append(f"{dist}=={version}" if version else dist)
        if not version:
            unpinned.append(dist)
    if unpinned:
        lines.insert(1, f"# Unpinned (the runs did not report their versions): {', '.join(unpinned)}")
    lines += [f"# optional (imported inside try: the script runs without it): {distribution(m)}" for m in optional if m not in required]
    return ("\n".join(lines) + "\n").encode("utf-8")


def script_imports(script: bytes) -> tuple[list[str], list[str]]:
    """(required, optional) top-level module names a script imports that are not in the standard library."""
    try:
        tree = ast.parse(script)
    except (SyntaxError, ValueError):
        # Not parseable by this Python: read the import lines instead (all counted as required).
        text = script.decode("utf-8", errors="replace")
        names = re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", text, flags=re.MULTILINE)
        return sorted({n for n in names if not _stdlib(n)}), []
    required: set[str] = set()
    optional: set[str] = set()

    def visit(node: ast.AST, in_try: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name.split(".")[0] for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module.split(".")[0]]
            for n in names:
                if not _stdlib(n):
                    (optional if in_try else required).add(n)
            # The body of a try is optional (the except branch is the fallback); handlers and else are not.
            if isinstance(child, (ast.Try, ast.TryStar)):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for handler in child.handlers:
                    visit(handler, in_try)
                for part in (*child.orelse, *child.finalbody):
                    visit_stmt(part, in_try)
            else:
                visit(child, in_try)

    def visit_stmt(stmt: ast.stmt, in_try: bool) -> None:
        wrapper = ast.Module(body=[stmt], type_ignores=[])  # so that visit() sees stmt itself
        visit(wrapper, in_try)

    visit(tree, False)
    return sorted(required), sorted(optional - required)


def _stdlib(module: str) -> bool:
    return module in sys.stdlib_module_names or module == "__future__"


# --- README.md ---------------------------------------------------------------------------
def readme(inp: ExportInput, problems: Sequence[str], names: Mapping[int, str], trainer: bytes) -> str:
    s, rows = inp.stats, inp.rows
    out: list[str] = [f"# {_inline(inp.name)}", ""]
    out.append(f"**val_bpb: {_num(s.val_bpb.mean, 4)}** ({s.n}-seed mean, std {_num(s.val_bpb.std, 4)}) | "
               f"val_loss {_num(s.val_loss.mean, 4)} nats | largest artifact {_bytes(s.max_artifact_bytes)} bytes | "
               f"{inp.hardware} | track {inp.track}")
    out.append("")
    if inp.override:
        out += ["> **Exported with an override: this group is not record-eligible as it stands.**", ">",
                f"> Override reason: {_inline(inp.override)}", ">", "> What stands in the way:"]
        out += [f"> - {_inline(p)}" for p in problems]
        out.append("")

    if inp.script:
        out += ["## What ran", "",
                f"The team's own `train_gpt.py` (sha256 `{inp.script.script_sha256}`) on the {inp.script.data} data: `{inp.what_runs}`", ""]
    else:
        out += ["## What this config changes", "",
                f"Against the default stack of caddie's shared trainer (every default is in `train_gpt.py`): `{inp.what_runs}`", ""]
    out += ["One seed, reproduced:", "", "```bash", f"{_command(inp, str(rows[0].seed))}", "```", ""]

    out += ["## Results", "", f"{inp.hardware}, {s.n} seed(s) counted.", "",
            "| Seed | val_bpb | val_loss | Pre-TTT bpb | Steps | Train s | Eval s | Artifact bytes |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.seed} | {_num(r.val_bpb, 4)} | {_num(r.val_loss, 4)} | {_num(r.pre_ttt_bpb, 4)} | {_int(r.steps)} | "
                   f"{_num(r.train_seconds, 1)} | {_num(r.eval_seconds, 1)} | {_bytes(r.artifact_bytes)} |")
    out.append(f"| **Mean** | **{_num(s.val_bpb.mean, 4)}** | **{_num(s.val_loss.mean, 4)}** | {_num(_mean([r.pre_ttt_bpb for r in rows]), 4)} | "
               f"{_num(_mean([r.steps for r in rows]), 0)} | {_num(s.mean_train_seconds, 1)} | {_num(s.mean_eval_seconds, 1)} | "
               f"{_bytes(_round(s.mean_artifact_bytes))} |")
    out.append(f"| **Std** | {_num(s.val_bpb.std, 4)} | {_num(s.val_loss.std, 4)} | | | | | |")
    out += ["", "Std is the sample standard deviation (n - 1). `bytes_total` in submission.json is the largest "
            f"artifact across seeds ({_bytes(s.max_artifact_bytes)} bytes), not the mean: every seed's artifact "
            "(code + compressed model) must fit under 16,000,000 bytes.", ""]
    if s.excluded:
        out += ["Runs of this group that are not counted:", ""]
        out += [f"- run {e.run_id} (seed {e.seed}): {_inline(e.reason)}" for e in s.excluded]
        out.append("")

    out += ["## Significance", ""] + _significance(inp) + [""]
    verdict = "yes" if inp.eligibility.eligible else "no"
    out.append(f"Record-eligible (every check passes and p < 0.01 against the baseline): **{verdict}**")
    out += [f"- {_inline(r)}" for r in inp.eligibility.reasons]
    out.append("")
    declared = [rs for rs in s.rules if rs.verdict is Verdict.DECLARED]
    if declared:
        out += ["Declared by the team, not verified by caddie (a script does not report them):", ""]
        out += [f"- {rs.rule}: {_inline(rs.reasons[0]) if rs.reasons else 'declared'}" for rs in declared]
        out.append("")

    out += ["## Rule checks", "", "| Rule | Verdict | Runs (pass / fail / not comparable / declared) |", "|---|---|---|"]
    for rs in s.rules:
        counts = " / ".join(str(rs.counts.get(v.value, 0)) for v in Verdict)
        out.append(f"| {rs.rule} | {_verdict_word(rs.verdict)} | {counts} |")
    out += ["", "Every check of every counted seed, with its figure and limit:", "",
            "| Rule | Seed | Verdict | Figure | Limit | Reason |", "|---|---:|---|---:|---:|---|"]
    for rs in s.rules:
        for r in rows:
            for c in _checks_of(r, rs.rule):
                out.append(f"| {c.rule} | {r.seed} | {_verdict_word(c.verdict)} | {_cell(_figure(c.figure))} | "
                           f"{_cell(_figure(c.limit))} | {_cell(c.reason)} |")
    out.append("")

    out += ["## Files", ""]
    for r in rows:
        source = inp.files[r.run_id].log_source
        how = ("the run's own log as the trainer wrote it, byte for byte" if source == LOG_STORED else
               "rebuilt from caddie's database copy of the log because the stored train.log was missing: "
               "bytes that were not valid UTF-8 (and NULs) read as '?'")
        out.append(f"- `{names[r.run_id]}`: caddie run {r.run_id}, {how}")
    out.append(f"- `train_gpt.py`: the single-file trainer every seed ran, {len(trainer):,} bytes "
               f"(sha256 `{hashlib.sha256(trainer).hexdigest()}`); its bytes are the code bytes counted in each artifact")
    out += [f"- `{name}`: a file `train_gpt.py` needs beside it, {len(data):,} bytes" for name, data in inp.script_files.items()]
    if inp.script and inp.script.environment:
        out.append("- `requirements.txt`: the environment the runs declared, each package pinned to the version they ran with, "
                   "then every other package their environment held")
    else:
        out.append("- `requirements.txt`: the packages `train_gpt.py` imports beyond the standard library")
    out.append("")

    seeds = " ".join(str(r.seed) for r in rows)
    vocab = inp.script.data.removeprefix("sp") if inp.script else "1024"
    out += ["## Rerun", "", "Every seed, with the challenge's data where the trainer looks by default "
            f"(`./data/datasets/fineweb10B_sp{vocab}`, `./data/tokenizers/fineweb_{vocab}_bpe.model`):", "",
            "```bash", f"for SEED in {seeds}; do", f"  {_command(inp, '$SEED')}", "done", "```", ""]
    out += ["---", f"Generated by caddie from group `{inp.group_key}` of team {_inline(inp.team)} ({inp.date.isoformat()})."
            + (" Exported with an override (see the top)." if inp.override else ""), ""]
    return "\n".join(out)


def _significance(inp: ExportInput) -> list[str]:
    c = inp.comparison
    if c is None:
        return ["No baseline group to compare against (the team has no other group on this track and hardware "
                "with a counted run); pass a baseline group to test against."]
    base = f"**{_inline(inp.baseline_name or '')}** (group `{(inp.baseline_key or '')[:12]}`)"
    head = (f"Baseline: {base}, {c.n_baseline} seed(s), mean val_loss {_num(c.mean_baseline, 5)}; "
            f"this group: {c.n_candidate} seed(s), mean val_loss {_num(c.mean_candidate, 5)}.")
    if c.p_value is None:
        return [head, "", f"Not enough seeds for the test: {_inline(c.message)}"]
    conf = f"{c.confidence * 100:g}%"
    t_df = f"t = {_num(c.t, 3)}, df = {_num(c.df, 2)}, " if c.t is not None and c.df is not None else ""
    side = "below" if c.significant else "not below"
    return [head, "",
            f"Improvement: {_num(c.improvement, 5)} {c.unit} ({conf} CI {_num(c.ci_low, 5)} .. {_num(c.ci_high, 5)}). "
            f"One-sided Welch t-test that the improvement exceeds {_num(c.margin, 5)} {c.unit}: {t_df}**p = {_p(c.p_value)}**, "
            f"{side} {c.alpha:g}" + (f" (policy {c.policy})." if c.policy else ".")]


def _command(inp: ExportInput, seed: str) -> str:
    """``XSA_LAST_N=11 SEED=1337 torchrun --standalone --nproc_per_node=8 train_gpt.py``."""
    env = [f"{k}={shlex.quote(_env_value(v))}" for k, v in sorted(inp.env.items())]
    return " ".join([*env, f"SEED={seed}", "torchrun", "--standalone", f"--nproc_per_node={_gpus(inp.hardware)}", "train_gpt.py"])


def _env_value(v: Any) -> str:
    # As the trainer's TrainerConfig.to_env writes it: booleans are 1/0.
    return ("1" if v else "0") if isinstance(v, bool) else str(v)


def _gpus(hardware: str) -> int:
    """``H100:8`` -> 8; hardware without a count (``cpu``) -> 1."""
    _, _, count = hardware.partition(":")
    return int(count) if count.isdigit() and int(count) > 0 else 1


def _checks_of(row: SeedRow, rule: str) -> list[Check]:
    return [c for c in row.checks if c.rule == rule]


def _first_reason(r: RuleSummary) -> str:
    if not r.reasons:
        return "no run reported it"
    more = len(r.reasons) - 1
    return r.reasons[0] + (f" (and {more} more run{'s' if more > 1 else ''})" if more else "")


def _verdict_word(v: Verdict) -> str:
    return {Verdict.PASS: "pass", Verdict.FAIL: "fail", Verdict.NOT_COMPARABLE: "not comparable", Verdict.DECLARED: "declared (not verified)"}[v]


# --- formatting -----------------------------------------------------------------------------
def _max_int(values: Sequence[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _mean(values: Sequence[float | int | None]) -> float | None:
    known = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(known) / len(known) if known else None


def _round(x: float | None) -> int | None:
    return None if x is None else round(x)


def _num(x: float | int | None, digits: int) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:,.{digits}f}" if digits == 0 else f"{x:.{digits}f}"


def _int(x: int | None) -> str:
    return "n/a" if x is None else f"{x:,}"


def _bytes(x: int | None) -> str:
    return _int(x)


def _p(p: float) -> str:
    return "0" if p == 0 else (f"{p:.2e}" if p < 1e-4 else f"{p:.4f}")


def _figure(x: float | int | str | None) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.0f}" if x.is_integer() and abs(x) >= 1000 else f"{x:g}"
    return str(x)


def _inline(text: str) -> str:
    """User text on one Markdown line (names and reasons never break the layout)."""
    return " ".join(str(text).split())


def _cell(text: str) -> str:
    return _inline(text).replace("|", "\\|")
