"""The challenge's public records: each record folder's per-seed figures and the rules judged on them.

A record folder (``records/<track folder>/<date>_<name>/``) holds ``submission.json``,
a README, the script and one log per seed. Reading is lenient, because the folders are:

- ``submission.json`` has 200+ distinct key paths across 46 records (``val_bpb``,
  ``seed_results.<seed>.val_bpb``, ``seeds.<seed>.bytes_total``, ...): figures are looked
  up by normalised key, first match wins;
- the logs are read by ``service.runs.logparse`` (the one log reader); a few facts the rules
  need and no score line states (the node's GPUs, the log's own total evaluation time,
  a stop by the wallclock cap) are read here from the lines that state them.

The log is what the run did; where the log is silent the JSON's figure is taken and the
check says so. Pure: ``read_record`` is the one function that touches the disk.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.results.rules import (
    RECORD_GPUS,
    Check,
    RunFacts,
    Verdict,
    check_artifact_bytes,
    check_code_revision,
    check_eval_time,
    check_train_time,
    declared,
)
from service.runs.compliance import RECORD_TRACK
from service.runs.logparse import parse_script_log

# The challenge's folder of each caddie track, and back.
TRACK_FOLDERS = {"10min_16mb": "track_10min_16mb", "unlimited": "track_non_record_16mb"}
FOLDER_TRACKS = {v: k for k, v in TRACK_FOLDERS.items()}
LOG_SUFFIXES = (".log", ".txt")
NOT_LOGS = ("requirements", "readme", "summary")

# nvidia-smi's table row of one GPU: "|   7  NVIDIA H100 80GB HBM3          On  |"
_GPU_ROW = re.compile(r"^\|\s+(\d+)\s+(NVIDIA [^|]*?)\s{2,}\S*\s*\|")
_WORLD = re.compile(r"\bworld_size:\s*(\d+)")
_CAP_STOP = re.compile(r"stopping_early:\s*wallclock_cap\s+train_time:\s*(\d+(?:\.\d+)?)ms")
_TOTAL_EVAL = re.compile(r"\btotal_eval_time:\s*(\d+(?:\.\d+)?)s\b")
_SEED_IN_NAME = re.compile(r"seed[_-]?(\d+)", re.IGNORECASE)
_NUMBER_IN_NAME = re.compile(r"(\d+)$")  # train0.txt, ternary_log_42.txt
_SAYS_HARDWARE = re.compile(r"\b(\d+)\s*[x×]\s*(H100(?:[ -]?(?:80GB|SXM5?|PCIe|NVL))*)", re.IGNORECASE)


@dataclass(frozen=True)
class LogFacts:
    """What one seed's log says, as the rules and the leaderboard need it (None: not said)."""

    name: str  # the log's path inside the record folder
    seed: int | None
    val_bpb: float | None = None
    val_loss: float | None = None
    pre_ttt_bpb: float | None = None
    artifact_bytes: int | None = None
    code_bytes: int | None = None
    steps: int | None = None
    train_seconds: float | None = None
    stopped_by_cap: bool = False
    eval_seconds: float | None = None  # the scored evaluation
    eval_source: str = ""  # where eval_seconds came from
    diagnostic_eval_seconds: float | None = None
    gpu_name: str | None = None
    gpu_count: int | None = None  # GPUs in the log's nvidia-smi table
    world_size: int | None = None
    says_hardware: str | None = None  # a launcher's line such as "Launching torchrun on 8xH100"


def _seed_of(name: str) -> int | None:
    stem = Path(name).stem
    m = _SEED_IN_NAME.search(stem) or _NUMBER_IN_NAME.search(stem)
    return int(m[1]) if m else None


def read_log(name: str, text: str) -> LogFacts:
    """One seed's log, read through service.runs.logparse, plus the rule facts no score line states."""
    _, s = parse_script_log(text)
    gpus: dict[int, str] = {}
    world = cap_ms = total_eval = None
    says = None
    for line in text.splitlines():
        if says is None and (m := _SAYS_HARDWARE.search(line)):
            says = f"{m[1]}x{m[2]}"
        if m := _GPU_ROW.match(line):
            gpus[int(m[1])] = m[2].strip()
        elif m := _WORLD.search(line):
            world = int(m[1])
        if m := _CAP_STOP.search(line):
            cap_ms = float(m[1])
        if m := _TOTAL_EVAL.search(line):
            total_eval = float(m[1])
    train = s.train_seconds
    if cap_ms is not None:
        train = cap_ms / 1000.0  # the cap's own line is the training time it stopped at
    evals = [e.value / 1000.0 for e in s.eval_ms]
    scored, source = _scored_eval(s, total_eval)
    final = s.final
    pre = s.pre_ttt
    return LogFacts(
        name=name, seed=_seed_of(name),
        val_bpb=final.val_bpb if final else None, val_loss=final.val_loss if final else None,
        pre_ttt_bpb=pre.val_bpb if pre else None,
        artifact_bytes=int(s.artifact_bytes.value) if s.artifact_bytes else None,
        code_bytes=int(s.code_bytes.value) if s.code_bytes else None,
        steps=int(s.steps.value) if s.steps else None,
        train_seconds=train, stopped_by_cap=cap_ms is not None,
        eval_seconds=scored, eval_source=source,
        diagnostic_eval_seconds=round(sum(evals) - scored, 3) if scored is not None and evals and sum(evals) > scored else None,
        gpu_name=next(iter(set(gpus.values()))) if len(set(gpus.values())) == 1 else (", ".join(sorted(set(gpus.values()))) or None),
        gpu_count=len(gpus) or None, world_size=world, says_hardware=says,
    )


def _scored_eval(s: Any, total_eval: float | None) -> tuple[float | None, str]:
    """The scored evaluation's seconds: the log's own total where it prints one; else the
    eval_time of the final score line (or of its line without ``_exact``, which carries the
    time); else the last evaluation that is not a diagnostic one."""
    if total_eval is not None:
        return total_eval, "total_eval_time"
    final = s.final
    if final is not None:
        base = final.label.removesuffix("_exact")
        timed = [e for e in s.eval_ms if e.line_no <= final.line_no and e.line.split(" ", 1)[0] in (final.label, base)]
        if timed:
            return timed[-1].value / 1000.0, timed[-1].line.split(" ", 1)[0]
    rest = [e for e in s.eval_ms if not e.line.lower().startswith("diagnostic")]
    if rest:
        return rest[-1].value / 1000.0, rest[-1].line.split(" ", 1)[0]
    return None, ""


# --- submission.json, leniently -----------------------------------------------------------------


def _norm(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def first(d: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first of ``keys`` present (compared without case, '_' or '-')."""
    by_norm = {_norm(k): v for k, v in d.items()}
    for k in keys:
        v = by_norm.get(_norm(k))
        if v is not None and v != "":
            return v
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        m = re.search(r"-?\d[\d,]*(?:\.\d+)?", v)
        if m:
            try:
                return float(m[0].replace(",", ""))
            except ValueError:
                return None
    return None


@dataclass(frozen=True)
class SeedFigures:
    """One seed's figures as the record's submission.json states them."""

    seed: int
    val_bpb: float | None = None
    val_loss: float | None = None
    artifact_bytes: int | None = None
    steps: int | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    pre_ttt_bpb: float | None = None


def seed_figures(sub: Mapping[str, Any]) -> list[SeedFigures]:
    """Per-seed figures from the many shapes records use: ``seed_results``/``seeds``/``per_seed``
    keyed by seed or as a list of objects with a ``seed``."""
    block = first(sub, "seed_results", "per_seed", "seed_runs", "runs", "results")
    seeds_value = first(sub, "seeds")
    if block is None and isinstance(seeds_value, dict | list) and any(isinstance(v, dict) for v in
                                                                      (seeds_value.values() if isinstance(seeds_value, dict) else seeds_value)):
        block = seeds_value
    items: list[tuple[Any, Mapping[str, Any]]] = []
    if isinstance(block, dict):
        items = [(k, v) for k, v in block.items() if isinstance(v, dict)]
    elif isinstance(block, list):
        items = [(first(v, "seed"), v) for v in block if isinstance(v, dict)]
    out = []
    for key, v in items:
        seed = _number(first(v, "seed")) if first(v, "seed") is not None else _number(str(key))
        if seed is None:
            continue
        train = _number(first(v, "train_time_s", "train_seconds", "training_time_s", "train_time_seconds"))
        train_ms = _number(first(v, "train_time_ms", "training_time_ms"))
        evals = _number(first(v, "eval_time_s", "eval_seconds", "total_eval_time_s", "ttt_eval_time_s", "eval_time_seconds"))
        eval_ms = _number(first(v, "eval_time_ms", "ttt_time_ms"))
        out.append(SeedFigures(
            seed=int(seed),
            val_bpb=_number(first(v, "val_bpb", "bpb", "final_val_bpb", "post_ttt_val_bpb", "ttt_val_bpb", "score")),
            val_loss=_number(first(v, "val_loss", "final_val_loss", "post_ttt_val_loss")),
            artifact_bytes=_int(first(v, "artifact_bytes", "bytes_total", "total_bytes", "submission_bytes", "artifact_size", "size_bytes")),
            steps=_int(first(v, "steps", "train_steps", "step", "iterations", "final_step")),
            train_seconds=train if train is not None else (train_ms / 1000.0 if train_ms is not None else None),
            eval_seconds=evals if evals is not None else (eval_ms / 1000.0 if eval_ms is not None else None),
            pre_ttt_bpb=_number(first(v, "pre_ttt_val_bpb", "pre_ttt_bpb", "pre_ttt_sliding_bpb", "sliding_bpb", "pre_ttt")),
        ))
    return out


def _int(v: Any) -> int | None:
    n = _number(v)
    return int(n) if n is not None else None


# --- one record -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicRecord:
    """One record folder: what its JSON states and what each of its logs says."""

    track: str  # caddie's name: 10min_16mb or unlimited
    folder: str  # e.g. 2026-03-23_LeakyReLU_LegalTTT_ParallelMuon
    date: str
    name: str
    author: str
    val_bpb: float | None  # the record's stated score (its seeds' mean)
    val_loss: float | None
    artifact_bytes: int | None
    hardware: str | None  # as the record declares it
    pytorch_version: str | None
    code_sha256: str | None  # of the folder's train_gpt.py
    seeds: list[SeedFigures] = field(default_factory=list)
    logs: list[LogFacts] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"record:{self.folder}"


_README_HARDWARE = re.compile(r"(\d+)\s*[x×]\s*(H100(?:[ -]?(?:80GB|SXM|SXM5|PCIe|NVL))*)", re.IGNORECASE)


def parse_record(track: str, folder: str, submission: Mapping[str, Any], logs: Iterable[tuple[str, str]],
                 code: bytes | None, readme: str = "") -> PublicRecord:
    """A record from its submission.json, its logs [(name, text)], its script's bytes and its README."""
    date = str(first(submission, "date") or folder[:10])[:10]
    hardware = first(submission, "hardware", "gpu", "gpus", "hardware_used")
    if hardware is None and (m := _README_HARDWARE.search(readme)):
        hardware = f"{m[1]}x{m[2]}"
    torch_version = first(submission, "pytorch_version", "torch_version", "pytorch")
    return PublicRecord(
        track=track, folder=folder, date=date,
        name=str(first(submission, "name", "title") or folder[11:]), author=str(first(submission, "author", "github_id") or ""),
        val_bpb=_number(first(submission, "val_bpb", "mean_val_bpb", "val_bpb_mean", "score", "bpb")),
        val_loss=_number(first(submission, "val_loss", "mean_val_loss", "val_loss_mean")),
        artifact_bytes=_int(first(submission, "bytes_total", "artifact_bytes", "artifact_bytes_max", "total_bytes", "artifact_bytes_mean")),
        hardware=str(hardware) if hardware is not None else None,
        pytorch_version=str(torch_version) if torch_version is not None else None,
        code_sha256=hashlib.sha256(code).hexdigest() if code is not None else None,
        seeds=seed_figures(submission), logs=[read_log(n, t) for n, t in logs],
    )


def _first_file(path: Path, *patterns: str) -> Path | None:
    for pattern in patterns:
        found = sorted(f for f in path.glob(pattern) if f.is_file())
        if found:
            return found[0]
    return None


def read_record(path: Path) -> PublicRecord:
    """Read one record folder from disk (the only I/O here)."""
    submission: Any = {}
    if (sub_path := _first_file(path, "submission.json", "submission*.json")) is not None:
        try:
            submission = json.loads(sub_path.read_text(encoding="utf-8", errors="replace"))
        except ValueError:
            submission = {}
    if not isinstance(submission, dict):
        submission = {}
    logs = []
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and f.suffix in LOG_SUFFIXES and not any(w in f.name.lower() for w in NOT_LOGS):
            logs.append((rel, f.read_text(encoding="utf-8", errors="replace")))
    code_path = _first_file(path, "train_gpt.py", "train_gpt*.py")
    code = code_path.read_bytes() if code_path is not None else None
    readme = _first_file(path, "README.md", "README*")
    readme_text = readme.read_text(encoding="utf-8", errors="replace") if readme is not None else ""
    return parse_record(FOLDER_TRACKS.get(path.parent.name, path.parent.name), path.name, submission, logs, code, readme_text)


def record_folders(root: Path) -> list[Path]:
    """Every record folder under ``root`` (a clone of the challenge repo, or its records/ folder)."""
    base = root / "records" if (root / "records").is_dir() else root
    return sorted(d for t in TRACK_FOLDERS.values() if (base / t).is_dir() for d in (base / t).iterdir() if d.is_dir())


# --- the rules on a record's log -----------------------------------------------------------------


def log_run_facts(record: PublicRecord, log: LogFacts) -> RunFacts:
    """RunFacts of one seed's log. Hardware is what the log's nvidia-smi table shows; a log
    without one is judged on its world_size and the GPU model the record declares."""
    by_seed = {s.seed: s for s in record.seeds}
    js = by_seed.get(log.seed) if log.seed is not None else None
    gpu, count = log.gpu_name, log.gpu_count or log.world_size
    # no nvidia-smi table: the log's own statement, else the record's declaration
    for stated in (log.says_hardware, record.hardware):
        if gpu is None and stated and (m := _SAYS_HARDWARE.search(stated)):
            gpu, count = f"{m[2]} (as {'the log' if stated is log.says_hardware else 'the record'} states)", count or int(m[1])
    artifact = log.artifact_bytes if log.artifact_bytes is not None else (js.artifact_bytes if js else None)
    if artifact is None:
        artifact = record.artifact_bytes  # the record's stated size (its largest seed's, where it gives several)
    return RunFacts(
        track=record.track, hardware=f"H100:{count}" if count else "unknown", artifact_bytes=artifact,
        train_seconds=log.train_seconds, eval_seconds=log.eval_seconds, stopped_by_cap=log.stopped_by_cap,
        diagnostic_eval_seconds=log.diagnostic_eval_seconds, gpu_name=gpu, world_size=count,
        code_sha256=record.code_sha256, code_dirty=False,
    )


RECORD_DECLARES = "the record (README, reviewed by the maintainers)"


def check_record_log(record: PublicRecord, log: LogFacts) -> list[Check]:
    """The rules on one accepted record's log. Bytes, training and evaluation time and the
    code's hash are verified from the folder; what a log cannot show (full validation, the
    TTT protocol, no validation data in training) is listed as declared by the record."""
    facts = log_run_facts(record, log)
    verified = [check_artifact_bytes(facts), check_train_time(facts), check_eval_time(facts)]
    code = check_code_revision(facts)
    if record.code_sha256:
        code = Check("code_revision", Verdict.PASS, f"the folder's train_gpt.py, sha256 {record.code_sha256[:12]}",
                     record.code_sha256, None)
    unverifiable = [
        Check("full_val", Verdict.NOT_COMPARABLE, "a record's log does not say how many validation targets it scored"),
        Check("ttt_protocol", Verdict.NOT_COMPARABLE, "a record's log does not show the order of scoring and adapting"),
        Check("no_val_in_train", Verdict.NOT_COMPARABLE, "a record's log does not name the files it trained on"),
    ]
    return verified[:1] + verified[1:] + [declared(c, RECORD_DECLARES) for c in unverifiable] + [code]


def is_record_log(record: PublicRecord, log: LogFacts) -> bool:
    """Whether the log belongs to the record's submission: the track's logs of 8 GPUs (a
    folder may also keep exploratory logs, e.g. a 4x-longer run, which the README says are not the record)."""
    count = log.gpu_count or log.world_size
    trained = log.train_seconds is not None or log.steps is not None
    return trained and (record.track != RECORD_TRACK or count in (None, RECORD_GPUS))
