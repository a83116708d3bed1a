"""The records/ folder from plain values (service.results.export): file by file and field by field."""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import replace
from datetime import date

import pytest

from service.core.errors import Conflict
from service.results.export import (
    LOG_DATABASE,
    ExportInput,
    SeedFiles,
    folder_name,
    log_names,
    override_problem,
    records_files,
    requirements_txt,
    script_imports,
    slug,
)
from service.results.export_io import zip_bytes
from service.results.groups import SeedRow, aggregate, eligibility
from service.results.rules import RULE_NAMES, RunFacts, Verdict, check_run
from service.results.statistics import compare

TRAINER = b"import os\nimport numpy as np\nimport torch\nfrom torch import nn\nimport zstandard\nimport sentencepiece as spm\n"
LOG = "step:1/7000 train_loss:6.93 ü → ✓\r\nstep:2/7000\r\n".encode("utf-8") + b"\xff\xfe not utf-8\n"
BASELINE_LOSS = [1.9100, 1.9105, 1.9095]


def row(run_id: int, seed: int, val_loss: float, val_bpb: float, *, artifact_bytes: int = 15_900_000,
        hardware: str = "H100:8", train_seconds: float = 599.0, **result: object) -> SeedRow:
    facts = dict(track="10min_16mb", hardware=hardware, artifact_bytes=artifact_bytes, train_seconds=train_seconds,
                 eval_seconds=410.0, val_tokens_scored=62_021_631, val_tokens_total=62_021_631, ttt_protocol="score_first",
                 train_shards=["fineweb_train_000000.bin"], val_shards=["fineweb_val_000000.bin"], trainer_revision="abc123",
                 train_fingerprints=["aa"], val_fingerprints=["bb"], code_sha256="cc", gpu_name="NVIDIA H100 80GB HBM3", world_size=8)
    facts.update(result)
    return SeedRow(run_id=run_id, seed=seed, status="SUCCEEDED", val_bpb=val_bpb, val_loss=val_loss, pre_ttt_bpb=val_bpb + 0.0025,
                   artifact_bytes=artifact_bytes, code_bytes=len(TRAINER), model_bytes=artifact_bytes - len(TRAINER),
                   train_seconds=train_seconds, eval_seconds=410.0, steps=7180, checks=tuple(check_run(RunFacts(**facts))))


GOOD = [row(11, 1337, 1.8900, 1.1192), row(12, 42, 1.8905, 1.1200), row(13, 2025, 1.8895, 1.1189)]


def make_input(rows: list[SeedRow] = GOOD, *, baseline: list[float] | None = BASELINE_LOSS, files: dict[int, SeedFiles] | None = None,
               **kw: object) -> ExportInput:
    stats = aggregate(rows)
    comp = compare([r.val_loss for r in stats.counted], baseline) if baseline is not None else None
    fields: dict = dict(
        name="XSA on all 11 layers", group_key="a" * 64, team="team-a", author="alice", date=date(2026, 3, 23),
        track="10min_16mb", hardware="H100:8", config={"XSA_LAST_N": 11, "TTT_ENABLED": True, "DATA_NOTE": "two words"},
        stats=stats, eligibility=eligibility(stats, comp, False),
        files=files if files is not None else {r.run_id: SeedFiles(log=LOG + str(r.seed).encode(), train_gpt=TRAINER) for r in rows},
        comparison=comp, baseline_name="baseline", baseline_key="b" * 64 if baseline is not None else None,
    )
    fields.update(kw)
    return ExportInput(**fields)


def no_nan(text: bytes) -> dict:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in submission.json"))


# --- the folder -----------------------------------------------------------------------------
def test_files_come_in_order_with_the_challenges_names() -> None:
    files = records_files(make_input())
    assert list(files) == ["README.md", "submission.json", "train_seed1337.log", "train_seed42.log", "train_seed2025.log",
                           "train_gpt.py", "requirements.txt"]
    assert folder_name(make_input()) == "records/track_10min_16mb/2026-03-23_XSA_on_all_11_layers"


def test_logs_are_the_runs_bytes_exactly() -> None:
    files = records_files(make_input())
    for r in GOOD:
        assert files[f"train_seed{r.seed}.log"] == LOG + str(r.seed).encode()  # CRLF, non-ASCII and a non-UTF-8 byte kept
    assert files["train_gpt.py"] == TRAINER


def test_slug_and_folder_name() -> None:
    assert slug("LeakyReLU² + Legal TTT (score-first)") == "LeakyReLU2_Legal_TTT_score_first"
    assert slug("Über  café") == "Uber_cafe"
    assert slug("../../etc/passwd") == "etc_passwd"
    assert folder_name(make_input(name="✓✓✓")) == "records/track_10min_16mb/2026-03-23_group_aaaaaaaa"


def test_a_seed_that_two_runs_share_gets_the_run_id_too() -> None:
    rows = [row(1, 7, 1.89, 1.12), row(2, 7, 1.8901, 1.1201), row(3, 8, 1.8902, 1.1202)]
    assert log_names(rows) == {1: "train_seed7_run1.log", 2: "train_seed7_run2.log", 3: "train_seed8.log"}


# --- submission.json ------------------------------------------------------------------------
def test_submission_json_field_by_field() -> None:
    inp = make_input(github_id="alice-gh")
    sub = no_nan(records_files(inp)["submission.json"])
    assert list(sub) == ["name", "author", "github_id", "date", "track", "val_bpb", "val_bpb_std", "val_loss", "seeds",
                         "seed_results", "bytes_total", "bytes_code", "hardware", "pytorch_version", "python_version", "cuda_version",
                         "flash_attn_version", "compliance", "runs",
                         "p_value", "baseline", "blurb"]
    assert (sub["name"], sub["author"], sub["github_id"], sub["date"], sub["track"]) == (
        "XSA on all 11 layers", "alice", "alice-gh", "2026-03-23", "10min_16mb")
    assert sub["val_bpb"] == pytest.approx((1.1192 + 1.1200 + 1.1189) / 3, abs=1e-12)
    mean = (1.1192 + 1.1200 + 1.1189) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in (1.1192, 1.1200, 1.1189)) / 2)
    assert sub["val_bpb_std"] == pytest.approx(std, rel=1e-9)
    assert sub["val_loss"] == pytest.approx(1.8900, abs=1e-12)
    assert sub["seeds"] == [1337, 42, 2025]  # submission order
    assert list(sub["seed_results"]) == ["1337", "42", "2025"]  # keyed by seed, as the records key it
    assert sub["seed_results"]["42"] == {"val_bpb": 1.12, "val_loss": 1.8905, "artifact_bytes": 15_900_000, "steps": 7180,
                                         "train_time_s": 599.0, "eval_time_s": 410.0, "pre_ttt_val_bpb": pytest.approx(1.1225)}
    assert sub["compliance"]["artifact_bytes"] == {"verdict": "pass", "runs": {"pass": 3, "fail": 0, "not_comparable": 0},
                                                   "reason": "artifact 15,900,000 bytes <= 16,000,000"}
    assert sub["runs"] == {"counted": 3, "run": 3, "not_counted": []}
    assert sub["bytes_code"] == len(TRAINER)
    assert sub["p_value"] == pytest.approx(compare([1.8900, 1.8905, 1.8895], BASELINE_LOSS).p_value, rel=1e-12)
    assert sub["baseline"] == {"name": "baseline", "group_key": "b" * 64}
    assert "XSA_LAST_N=11" in sub["blurb"]


def test_bytes_total_is_the_largest_seeds_artifact() -> None:
    rows = [row(1, 1, 1.89, 1.12, artifact_bytes=15_000_000), row(2, 2, 1.8905, 1.1201, artifact_bytes=15_990_006)]
    sub = no_nan(records_files(make_input(rows))["submission.json"])
    assert sub["bytes_total"] == 15_990_006


def test_unknown_and_non_finite_figures_are_null_not_nan() -> None:
    rows = [row(1, 1, 1.89, 1.12, train_seconds=float("nan")), replace(row(2, 2, 1.8905, 1.1201), eval_seconds=None)]
    files = records_files(make_input(rows, baseline=None, override="exploring"))
    sub = no_nan(files["submission.json"])
    assert sub["seed_results"]["1"]["train_time_s"] is None and sub["seed_results"]["2"]["eval_time_s"] is None
    assert sub["p_value"] is None and sub["baseline"] is None and sub["github_id"] is None
    one = no_nan(records_files(make_input(rows[:1], baseline=None, override="one seed"))["submission.json"])
    assert one["val_bpb_std"] is None  # one seed: no spread


# --- the override ----------------------------------------------------------------------------
def test_a_failed_check_is_refused_without_an_override() -> None:
    rows = [GOOD[0], GOOD[1], row(13, 2025, 1.8895, 1.1189, artifact_bytes=16_000_001)]
    with pytest.raises(Conflict) as exc:
        records_files(make_input(rows))
    msg = str(exc.value)
    assert "artifact_bytes fail: artifact 16,000,001 bytes > 16,000,000 (over by 1)" in msg and '--override "reason"' in msg


def test_the_override_reason_is_written_into_both_files() -> None:
    rows = [GOOD[0], GOOD[1], row(13, 2025, 1.8895, 1.1189, artifact_bytes=16_000_001)]
    reason = "1 byte over on one seed; the fix is in PR #12 — résumé"
    files = records_files(make_input(rows, override=reason))
    sub = no_nan(files["submission.json"])
    assert sub["override_reason"] == reason
    readme = files["README.md"].decode("utf-8")
    assert "> **Exported with an override: this group is not record-eligible as it stands.**" in readme
    assert f"> Override reason: {reason}" in readme
    assert "> - artifact_bytes fail: artifact 16,000,001 bytes > 16,000,000 (over by 1)" in readme


@pytest.mark.parametrize("case", ["not_comparable", "no_baseline", "not_significant", "not_enough_seeds"])
def test_anything_short_of_record_eligible_needs_an_override(case: str) -> None:
    inp = {
        "not_comparable": lambda: make_input([row(r.run_id, r.seed, r.val_loss, r.val_bpb, world_size=1) for r in GOOD]),
        "no_baseline": lambda: make_input(baseline=None),
        "not_significant": lambda: make_input(baseline=[1.8920, 1.8930, 1.8910]),
        "not_enough_seeds": lambda: make_input(GOOD[:1]),
    }[case]()
    assert not inp.eligibility.eligible
    with pytest.raises(Conflict, match="not record-eligible"):
        records_files(inp)
    assert no_nan(records_files(replace(inp, override="because"))["submission.json"])["override_reason"] == "because"


def test_an_eligible_group_needs_no_override_and_records_none() -> None:
    inp = make_input()
    assert inp.eligibility.eligible
    files = records_files(replace(inp, override="not needed"))
    assert "override_reason" not in no_nan(files["submission.json"])
    assert "override" not in files["README.md"].decode().lower()


@pytest.mark.parametrize(("text", "ok"), [
    (None, True), ("a", True), ("x" * 500, True), ("naïve — ok", True),
    ("", False), ("   ", False), ("x" * 501, False), ("a\nb", False), ("a\tb", False), ("a\x1bb", False), ("a\x7f", False),
])
def test_override_reason_rules(text: str | None, ok: bool) -> None:
    assert (override_problem(text) is None) is ok


# --- train_gpt.py and requirements -----------------------------------------------------------------
def test_seeds_that_ran_different_trainers_are_refused_by_name() -> None:
    files = {r.run_id: SeedFiles(log=LOG, train_gpt=TRAINER if r.run_id != 13 else TRAINER + b"# v2\n") for r in GOOD}
    with pytest.raises(Conflict) as exc:
        records_files(make_input(files=files))
    msg = str(exc.value)
    assert f"sha256 {hashlib.sha256(TRAINER).hexdigest()[:12]}: run(s) 11, 12" in msg
    assert f"sha256 {hashlib.sha256(TRAINER + b'# v2' + bytes([10])).hexdigest()[:12]}: run(s) 13" in msg


def test_a_counted_run_without_files_is_refused() -> None:
    with pytest.raises(Conflict, match="run\\(s\\) 13"):
        records_files(make_input(files={11: SeedFiles(LOG, TRAINER), 12: SeedFiles(LOG, TRAINER)}))


def test_requirements_come_from_the_scripts_imports() -> None:
    script = (b"from __future__ import annotations\nimport os, sys\nimport numpy as np\nfrom torch import nn\nimport torch.distributed as dist\n"
              b"import yaml\nfrom . import sibling\ntry:\n    from flash_attn_interface import f\nexcept ImportError:\n    import math\n"
              b"def g():\n    import zstandard\n")
    assert script_imports(script) == (["numpy", "torch", "yaml", "zstandard"], ["flash_attn_interface"])
    lines = requirements_txt(script).decode().splitlines()
    assert [ln for ln in lines if not ln.startswith("#")] == ["numpy", "torch", "PyYAML", "zstandard"]
    # the distribution's name, not the import's: FlashAttention 3 ships flash_attn_interface in flash_attn_3
    assert lines[-1] == "# optional (imported inside try: the script runs without it): flash_attn_3"
    assert "Unpinned (the runs did not report their versions): numpy, torch, PyYAML, zstandard" in requirements_txt(script).decode()
    pinned = requirements_txt(script, {"torch": "2.9.1+cu128"}).decode().splitlines()
    assert "torch==2.9.1+cu128" in pinned and "numpy" in pinned
    fa3 = requirements_txt(b"from flash_attn_interface import flash_attn_func\n").decode()
    assert "flash_attn_3\n" in fa3 and "--find-links https://" in fa3
    # Not valid Python for this interpreter: the import lines still count.
    assert script_imports(b"import numpy\nprint 'py2'\n") == (["numpy"], [])


# --- README.md ------------------------------------------------------------------------------------
def test_readme_has_the_config_table_test_checks_and_rerun() -> None:
    readme = records_files(make_input())["README.md"].decode("utf-8")
    assert readme.startswith("# XSA on all 11 layers\n")
    assert "`DATA_NOTE=two words TTT_ENABLED=1 XSA_LAST_N=11`" in readme
    assert "DATA_NOTE='two words' TTT_ENABLED=1 XSA_LAST_N=11 SEED=1337 torchrun --standalone --nproc_per_node=8 train_gpt.py" in readme
    assert "for SEED in 1337 42 2025; do\n  DATA_NOTE='two words' TTT_ENABLED=1 XSA_LAST_N=11 SEED=$SEED torchrun" in readme
    assert "| 42 | 1.1200 | 1.8905 | 1.1225 | 7,180 | 599.0 | 410.0 | 15,900,000 |" in readme
    assert "| **Mean** | **1.1194** | **1.8900** |" in readme and "| **Std** | 0.0006 | 0.0005 |" in readme
    comp = compare([1.8900, 1.8905, 1.8895], BASELINE_LOSS)
    assert f"**p = {comp.p_value:.2e}**, below 0.01" in readme
    assert f"Improvement: {comp.improvement:.5f} nats (95% CI {comp.ci_low:.5f} .. {comp.ci_high:.5f})" in readme
    for rule in RULE_NAMES:
        assert f"| {rule} | pass | 3 / 0 / 0 / 0 |" in readme
        for r in GOOD:
            assert f"| {rule} | {r.seed} | pass |" in readme
    assert "| train_time | 2025 | pass | 599 | 600 | training 599.0 s <= 600 s |" in readme
    assert "| full_val | 1337 | pass | 62,021,631 | 62,021,631 |" in readme
    assert "bytes_total` in submission.json is the largest artifact across seeds" in readme
    assert f"sha256 `{hashlib.sha256(TRAINER).hexdigest()}`" in readme
    assert readme.rstrip().endswith(f"Generated by caddie from group `{'a' * 64}` of team team-a (2026-03-23).")


def test_readme_says_not_enough_seeds_and_how_many_more() -> None:
    inp = make_input(GOOD[:1], override="one seed so far")
    readme = records_files(inp)["README.md"].decode()
    assert "Not enough seeds for the test: not enough seeds: candidate has 1, baseline 3" in readme
    assert "more seed" in readme


def test_readme_says_when_a_log_came_from_the_database() -> None:
    files = {r.run_id: SeedFiles(LOG, TRAINER, log_source=LOG_DATABASE if r.run_id == 12 else "stored") for r in GOOD}
    readme = records_files(make_input(files=files))["README.md"].decode()
    assert "`train_seed42.log`: caddie run 12, rebuilt from caddie's database copy" in readme
    assert "`train_seed1337.log`: caddie run 11, the run's own log as the trainer wrote it, byte for byte" in readme


def test_user_text_cannot_break_the_markdown_tables() -> None:
    rows = [row(1, 1, 1.89, 1.12, code_sha256="a|b\nc"), row(2, 2, 1.8905, 1.1201, code_sha256="a|b\nc")]
    readme = records_files(make_input(rows, name="multi\nline # name", override="ok"))["README.md"].decode()
    assert readme.startswith("# multi line # name\n")
    assert "| code_revision | 1 | pass | a\\|b c | n/a | code sha256 a\\|b c at abc123, dirty flag not reported |" in readme


# --- the zip -----------------------------------------------------------------------------------------
def test_zip_is_deterministic_and_holds_the_folder() -> None:
    inp = make_input()
    folder, files = folder_name(inp), records_files(inp)
    data = zip_bytes(folder, files)
    assert data == zip_bytes(folder, records_files(inp))
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert [i.filename for i in zf.infolist()] == [f"{folder}/{n}" for n in files]
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
    assert {n: zf.read(f"{folder}/{n}") for n in files} == files


# --- the records' own shape, field by field against three real records ------------------------
from pathlib import Path  # noqa: E402

RECORDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "challenge" / "records" / "track_10min_16mb"
THREE = ["2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072", "2026-04-01_Vocab4096_MLPMult4_WD085", "2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2"]
# Fields a record carries that caddie does not make: its own prose and lineage.
PROSE = {"blurb", "technique_summary", "calibration", "comparison_baseline_pr", "implementation_lineage_pr", "negative_results_pr",
         "delta_vs_pr549_bpb", "delta_vs_pr549_nats", "t_statistic", "welch_df", "cuda_version", "flash_attn_version",
         "step_avg_ms_mean", "train_steps_mean", "artifact_bytes_max", "artifact_bytes_mean", "val_loss_std"}


def _kind(v: object) -> str:
    return "number" if isinstance(v, int | float) and not isinstance(v, bool) else type(v).__name__


@pytest.mark.parametrize("folder", THREE)
def test_submission_json_has_each_field_of_a_real_record_in_its_type(folder: str) -> None:
    real = json.loads((RECORDS / folder / "submission.json").read_text())
    inp = make_input(hardware_ran="8xNVIDIA H100 80GB HBM3", pytorch_version="2.9.1+cu128")
    ours = no_nan(records_files(inp)["submission.json"])
    for key, value in real.items():
        if key in PROSE:
            continue
        assert key in ours, f"{folder} has {key!r}, caddie's export does not"
        if value is not None and ours[key] is not None:
            assert _kind(ours[key]) == _kind(value), (key, ours[key], value)
    # seed_results: keyed by seed, each seed with the record's per-seed fields
    assert all(k.isdigit() for k in real["seed_results"]) and all(k.isdigit() for k in ours["seed_results"])
    real_fields = {f for v in real["seed_results"].values() for f in v} - {"step_avg_ms"}
    for seed in ours["seed_results"].values():
        assert real_fields <= set(seed), real_fields - set(seed)
        assert all(_kind(seed[f]) == "number" for f in real_fields)


def test_the_challenges_track_folders() -> None:
    assert folder_name(make_input()).startswith("records/track_10min_16mb/2026-03-23_")
    assert folder_name(make_input(track="unlimited")).startswith("records/track_non_record_16mb/2026-03-23_")
    assert (RECORDS.parent / "track_10min_16mb").is_dir()


def test_every_run_of_the_config_is_disclosed() -> None:
    rows = [*GOOD, replace(row(9, 7, 1.9, 1.13), status="FAILED", status_reason="CUDA OOM", val_bpb=None, val_loss=None)]
    sub = no_nan(records_files(make_input(rows))["submission.json"])
    assert sub["runs"]["counted"] == 3 and sub["runs"]["run"] == 4
    assert sub["runs"]["not_counted"] == [{"run_id": 9, "seed": 7, "status": "FAILED", "reason": "failed: CUDA OOM; not counted"}]


def test_a_script_group_whose_verifiable_checks_pass_exports_without_override_listing_declarations() -> None:
    """Issue 19 item 7: full_val, ttt_protocol and no_val_in_train declared by the team; the rest real and passing."""
    from service.results.rules import declared

    def script_row(run_id: int, seed: int, loss: float, bpb: float) -> SeedRow:
        r = row(run_id, seed, loss, bpb)
        checks = tuple(declared(replace(c, verdict=Verdict.NOT_COMPARABLE), "the team") if c.rule in ("full_val", "ttt_protocol", "no_val_in_train")
                       else c for c in r.checks)
        return replace(r, checks=checks)

    rows = [script_row(1, 1337, 1.8900, 1.1192), script_row(2, 42, 1.8905, 1.1200), script_row(3, 2025, 1.8895, 1.1189)]
    inp = make_input(rows)
    assert inp.eligibility.eligible, inp.eligibility.reasons
    files = records_files(inp)  # no override needed
    readme = files["README.md"].decode()
    assert "Declared by the team, not verified by caddie" in readme and "- ttt_protocol: declared by the team" in readme
    assert "| ttt_protocol | declared (not verified) |" in readme
    sub = no_nan(files["submission.json"])
    assert sub["compliance"]["ttt_protocol"]["verdict"] == "declared" and "override_reason" not in sub


def test_the_runs_environment_is_written_as_the_records_write_it() -> None:
    """Issue 20 item 3: a script group's declared environment, its requirements pinned to what every run had
    and every other package after them; python, torch, CUDA and FlashAttention in submission.json."""
    from service.runs.scripts.spec import ScriptSpec

    req = b"# Python deps\ntorch==2.9.1+cu128\nsentencepiece\nbrotli\n"
    env = {"requirements": "requirements.txt", "python": "3.12", "packages": ["flash_attn_3"],
           "find_links": ["https://windreamer.github.io/flash-attention3-wheels/cu128_torch291/"], "system_packages": ["lrzip"]}
    script = ScriptSpec(script_sha256=hashlib.sha256(TRAINER).hexdigest(), files={"requirements.txt": hashlib.sha256(req).hexdigest()},
                        env={}, data="sp8192", environment=env)
    report = {"python": "3.12.3", "torch": "2.9.1+cu128", "cuda": "12.8", "flash_attn": "flash_attn_3 3.0.0",
              "packages": {"torch": "2.9.1+cu128", "sentencepiece": "0.2.1", "brotli": "1.1.0", "flash_attn_3": "3.0.0", "nvidia-nccl-cu12": "2.27.3"}}
    files = records_files(make_input(script=script, script_files={"requirements.txt": req}, environments=[report, report, report]))
    assert files["requirements.txt"].decode().splitlines() == [
        "# Python 3.12.3; CUDA 12.8 (what the runs reported)",
        "# System deps (apt): apt-get install -y lrzip",
        "--find-links https://windreamer.github.io/flash-attention3-wheels/cu128_torch291/",
        "torch==2.9.1+cu128", "sentencepiece==0.2.1", "brotli==1.1.0", "flash_attn_3==3.0.0",
        "# Every other package of the environment the runs ran in:",
        "nvidia-nccl-cu12==2.27.3",
    ]
    sub = no_nan(files["submission.json"])
    assert (sub["pytorch_version"], sub["python_version"], sub["cuda_version"], sub["flash_attn_version"]) == (
        "2.9.1+cu128", "3.12.3", "12.8", "flash_attn_3 3.0.0")
    assert "the environment the runs declared, each package pinned" in files["README.md"].decode()


def test_a_trainer_groups_requirements_are_pinned_from_its_runs_environments() -> None:
    report = {"python": "3.11.7", "torch": "2.9.1+cu128", "packages": {"torch": "2.9.1+cu128", "numpy": "2.1.0", "sentencepiece": "0.2.1"}}
    other = {**report, "packages": {**report["packages"], "numpy": "2.2.0"}}
    lines = records_files(make_input(environments=[report, other]))["requirements.txt"].decode().splitlines()
    assert "torch==2.9.1+cu128" in lines and "numpy" in lines  # numpy differed between the runs: left unpinned, and said so
