"""A script run's bytes are counted from its files (issue 20 item 4), on real record folders:
its train_gpt.py (and the helper modules it loaded), the compressed model it wrote; where the
log disagrees, both are kept and the files win."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from service.results.rules import RunFacts, Verdict, check_artifact_bytes
from service.runs.bytes_check import self_extracting_bytes
from service.runs.logparse import parse_script_log
from worker.run.script_job import script_outcome

RECORDS = Path(__file__).resolve().parents[4] / "shared" / "challenge" / "records" / "track_10min_16mb"
pytestmark = pytest.mark.skipif(not RECORDS.is_dir(), reason="the challenge's records are not beside the repository")


def run_folder(tmp_path: Path, record: str, log_name: str, model_bytes: int | None, *, helpers: tuple[str, ...] = ()) -> tuple[Path, dict, str]:
    """A run folder as a script run of the record leaves it: its files, its log, a model file of ``model_bytes``."""
    src = RECORDS / record
    out = tmp_path / "run"
    out.mkdir()
    for name in ("train_gpt.py", *helpers):
        shutil.copy(src / name, out / name)
    log = (src / log_name).read_text(errors="replace")
    (out / "stdout.log").write_text(log)
    if model_bytes is not None:
        (out / "final_model.int6.ptz").write_bytes(b"\0" * model_bytes)
    sha = lambda n: hashlib.sha256((src / n).read_bytes()).hexdigest()  # noqa: E731
    spec = {"script": sha("train_gpt.py"), "files": {n: sha(n) for n in helpers}, "env": {}, "data": "sp1024"}
    return out, spec, log


def outcome(out: Path, spec: dict, log: str) -> dict:
    _, summary = parse_script_log(log)
    return script_outcome(summary, spec, out)


def test_a_record_whose_log_matches_its_files_agrees(tmp_path: Path) -> None:
    # 2026-03-23: "Code size: 89458", "Serialized model int6+lzma: 15887928", "Total submission size int6+lzma: 15977386"
    out, spec, log = run_folder(tmp_path, "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon", "train_seed1337.log", 15_887_928)
    done = outcome(out, spec, log)
    assert (done["code_bytes"], done["model_bytes"], done["artifact_bytes"]) == (89_458, 15_887_928, 15_977_386)
    assert done["result"]["bytes"]["disagreements"] == []


def test_a_model_file_unlike_the_log_wins_and_both_are_shown(tmp_path: Path) -> None:
    out, spec, log = run_folder(tmp_path, "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon", "train_seed1337.log", 15_950_000)
    done = outcome(out, spec, log)
    assert done["artifact_bytes"] == 89_458 + 15_950_000 == 16_039_458  # over the limit by the file, under it by the log
    assert "model: the log says 15,887,928 bytes, the files 15,950,000" in " ".join(done["result"]["bytes"]["disagreements"])
    facts = RunFacts.from_result(track="10min_16mb", hardware="H100:8", allow_noncompliant=False, result=done["result"],
                                 artifact_bytes=done["artifact_bytes"])
    check = check_artifact_bytes(facts)
    assert check.verdict is Verdict.FAIL and "its log says 15,977,386" in check.reason


def test_code_is_the_file_that_ran_not_the_log_of_an_earlier_version(tmp_path: Path) -> None:
    # 2026-03-18_LowerLR: the folder's train_gpt.py is 47,642 bytes, its log says 50,919 (an earlier edit of it)
    out, spec, log = run_folder(tmp_path, "2026-03-18_LowerLR", next(p.name for p in sorted((RECORDS / "2026-03-18_LowerLR").glob("*.log"))), None)
    done = outcome(out, spec, log)
    assert done["code_bytes"] == 47_642 == (RECORDS / "2026-03-18_LowerLR" / "train_gpt.py").stat().st_size
    assert any(d.startswith("code: the log says 50,919 bytes, the files 47,642") for d in done["result"]["bytes"]["disagreements"])
    assert "the script wrote no *.ptz model file" in " ".join(done["result"]["bytes"]["notes"])


def test_a_stub_that_execs_a_helper_counts_the_helper(tmp_path: Path) -> None:
    # 2026-04-06: train_gpt.py (74 bytes) execs train_gpt_decode.py; unwatched, every uploaded .py counts
    record = "2026-04-06_SP8192_HessianSDClip_ProgressiveRecurrence"
    out, spec, log = run_folder(tmp_path, record, "train_seed1337.log", 15_976_275, helpers=("train_gpt_decode.py",))
    done = outcome(out, spec, log)
    assert done["code_bytes"] == 74 + (RECORDS / record / "train_gpt_decode.py").stat().st_size
    assert done["result"]["touches"]["watched"] is False  # no audit.jsonl here


def test_compressed_code_is_counted_by_caddies_own_compression_of_the_file(tmp_path: Path) -> None:
    # 2026-04-27 (the last record): "Code size (compressed): 31999" of a 158,429-byte file (pyminify + brotli)
    record = "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"
    out, spec, log = run_folder(tmp_path, record, "train_seed42.log", 15_865_260)
    done = outcome(out, spec, log)
    mine = self_extracting_bytes((RECORDS / record / "train_gpt.py").read_bytes())
    assert done["code_bytes"] == mine and 31_999 < mine < 158_429
    assert done["artifact_bytes"] == mine + 15_865_260 <= 16_000_000  # still within the limit, counted by caddie
    assert any(d.startswith("code: the log says 31,999 bytes") for d in done["result"]["bytes"]["disagreements"])


def test_the_self_extracting_file_runs_the_same_code(tmp_path: Path) -> None:
    import base64
    import lzma
    import subprocess
    import sys

    from service.runs.bytes_check import SELF_EXTRACTING

    code = b"import sys\nprint('same code', __name__, sys.argv[1:])\n" * 20
    packed = SELF_EXTRACTING % base64.b85encode(lzma.compress(code, preset=9 | lzma.PRESET_EXTREME))
    (tmp_path / "plain.py").write_bytes(code)
    (tmp_path / "packed.py").write_bytes(packed)
    run = lambda n: subprocess.run([sys.executable, n, "x"], cwd=tmp_path, capture_output=True, check=True).stdout  # noqa: E731
    assert run("packed.py") == run("plain.py") and len(packed) == self_extracting_bytes(code) < len(code)


def test_the_log_reports_its_gpus_cap_stop_and_scored_evaluation(tmp_path: Path) -> None:
    # as the records' verdicts read a log (service.results.public_records.read_log): its nvidia-smi table, its cap line
    out, spec, log = run_folder(tmp_path, "2026-03-18_FP16Embed_WD3600", "train.log", None)
    done = outcome(out, spec, log)
    r = done["result"]
    assert (r["gpu_name"], r["world_size"], r["stopped_by_cap"]) == ("NVIDIA H100 80GB HBM3", 8, True)
    assert done["train_seconds"] == pytest.approx(600.008)
    facts = RunFacts.from_result(track="10min_16mb", hardware="cpu", allow_noncompliant=False, result=r, train_seconds=done["train_seconds"])
    from service.results.rules import check_train_time

    assert check_train_time(facts).verdict is Verdict.PASS  # within the 0.2 s the challenge accepted for a capped run
