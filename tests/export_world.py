"""Finished groups made straight in the database, with their files in an artifact store, as the
worker leaves them: for the records/ export tests of the API and the CLI."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.core.models import Artifact, LogChunk, Run, RunGroup, utcnow
from service.core.storage import LocalArtifactStore
from service.results.queries import judge_run

FINISHED = datetime(2026, 3, 23, 16, 5, tzinfo=timezone.utc)
TRAINER = (b'"""bundled trainer"""\nfrom __future__ import annotations\nimport os\nimport numpy as np\n'
           b"import sentencepiece as spm\nimport torch\nimport zstandard\nfrom torch import nn\n"
           b"try:\n    from flash_attn_interface import flash_attn_func\nexcept ImportError:\n    flash_attn_func = None\n")


def log_bytes(seed: int) -> bytes:
    """A log with what must survive byte for byte: CRLF line ends, non-ASCII text, a byte that is not UTF-8."""
    return (f"seed:{seed}\r\nstep:1/7000 train_loss:6.9 ü → ✓\r\n".encode("utf-8") + b"raw:\xff\xfe\n"
            + f"final_ttt val_loss:1.89 val_bpb:1.12 seed {seed}\n".encode("utf-8"))


@dataclass
class Seed:
    seed: int
    val_loss: float
    val_bpb: float
    artifact_bytes: int = 15_900_000
    code: bytes = TRAINER
    log: bytes | None = None  # default: log_bytes(seed)
    status: str = "SUCCEEDED"
    train_seconds: float = 599.0
    eval_seconds: float = 410.0
    result: dict[str, Any] = field(default_factory=dict)  # replaces result.json fields


def result_json(s: Seed) -> dict[str, Any]:
    r = {
        "val_loss": s.val_loss, "val_bpb": s.val_bpb, "pre_ttt_bpb": s.val_bpb + 0.0025,
        "total_bytes": s.artifact_bytes, "code_bytes": len(s.code), "model_bytes": s.artifact_bytes - len(s.code),
        "steps": 7180, "train_seconds": s.train_seconds, "eval_seconds": s.eval_seconds, "seed": s.seed,
        "trainer_revision": "sha256:" + hashlib.sha256(s.code).hexdigest()[:16],
        "val_tokens_scored": 62_021_631, "val_tokens_total": 62_021_631, "ttt_protocol": "score_first",
        "train_shards": ["fineweb_train_000000.bin", "fineweb_train_000001.bin"], "val_shards": ["fineweb_val_000000.bin"],
        "gpu_name": "NVIDIA H100 80GB HBM3", "world_size": 8,
        "train_fingerprints": ["a" * 64, "b" * 64], "val_fingerprints": ["c" * 64],
    }
    r.update(s.result)
    return r


def make_group(session: Session, store: LocalArtifactStore, tmp: Path, *, team_id: int, user_id: int, name: str,
               config: dict[str, Any], seeds: list[Seed], track: str = "10min_16mb", hardware: str = "H100:8") -> str:
    """A group and its runs, results, rule checks, log chunks and stored files; returns the group key."""
    key = hashlib.sha256(json.dumps([team_id, name, config, track, hardware]).encode()).hexdigest()
    session.add(RunGroup(key=key, team_id=team_id, name=name, track=track, hardware=hardware, config=config, created_at=utcnow()))
    session.flush()
    for i, s in enumerate(seeds):
        run = Run(team_id=team_id, user_id=user_id, name=name, notes="", spec=config, seed=s.seed, group_key=key, track=track,
                  hardware=hardware, priority=0, status=s.status, status_reason="" if s.status == "SUCCEEDED" else "boom",
                  attempts=1, submitted_at=FINISHED - timedelta(hours=2), finished_at=FINISHED + timedelta(minutes=i), log_bytes=0)
        session.add(run)
        session.flush()
        log = s.log if s.log is not None else log_bytes(s.seed)
        # The database's copy, as the executor keeps it (text; invalid bytes become '?').
        session.add(LogChunk(run_id=run.id, offset=0, data=log.decode("utf-8", errors="replace"), created_at=utcnow()))
        if s.status == "SUCCEEDED":
            result = result_json(s)
            run.result = result
            run.val_loss, run.val_bpb, run.pre_ttt_bpb = result["val_loss"], result["val_bpb"], result["pre_ttt_bpb"]
            run.artifact_bytes, run.code_bytes, run.model_bytes = result["total_bytes"], result["code_bytes"], result["model_bytes"]
            run.train_seconds, run.eval_seconds, run.steps = result["train_seconds"], result["eval_seconds"], result["steps"]
            judge_run(run)
            out = tmp / f"run{run.id}"
            out.mkdir(parents=True)
            files = {"train.log": ("log", log), "train_gpt.py": ("code", s.code), "result.json": ("result", json.dumps(result).encode()),
                     "model.int6.ptz": ("model", b"\x28\xb5\x2f\xfd" + bytes(64))}
            for filename, (kind, data) in files.items():
                (out / filename).write_bytes(data)
                uri, size, sha = store.put(run.id, kind, out / filename)
                session.add(Artifact(run_id=run.id, kind=kind, uri=uri, bytes=size, sha256=sha, created_at=utcnow()))
    session.commit()
    return key


# Three seeds that beat BASELINE_SEEDS by ~0.02 nats with a small spread: p far below 0.01.
GOOD_SEEDS = [Seed(1337, 1.8900, 1.1192), Seed(42, 1.8905, 1.1200), Seed(2025, 1.8895, 1.1189)]
BASELINE_SEEDS = [Seed(1337, 1.9100, 1.1312), Seed(42, 1.9105, 1.1318), Seed(2025, 1.9095, 1.1309)]
