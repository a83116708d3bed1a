"""GET /groups/{key}/export through the real app, on SQLite and PostgreSQL: the zip checked file by
file and field by field against the runs and their stored files; who may export; the override."""

from __future__ import annotations

import io
import json
import statistics
import zipfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import Artifact, Run
from service.core.settings import Settings
from service.core.storage import LocalArtifactStore
from service.results.rules import RULE_NAMES
from service.results.statistics import compare_policy
from tests.export_world import BASELINE_SEEDS, GOOD_SEEDS, TRAINER, Seed, log_bytes, make_group

GROUPS = "/api/v1/groups"


@pytest.fixture
def store(settings: Settings) -> LocalArtifactStore:
    # The store the app builds from the same settings (CADDIE_HOME/artifacts).
    return LocalArtifactStore(settings.artifact_dir)


@pytest.fixture
def team_a(world, session: Session, store: LocalArtifactStore, tmp_path: Path):
    """make(name, seeds, config=...) -> key: a finished group of team-a, made by alice."""

    def make(name: str, seeds: list[Seed], config: dict | None = None, **kw) -> str:
        return make_group(session, store, tmp_path / name.replace(" ", "_"), team_id=world.team_ids["team-a"],
                          user_id=world.user_ids["alice"], name=name, config=config or {"XSA_LAST_N": 11}, seeds=seeds, **kw)

    return make


def export(client: TestClient, world, key: str, who: str = "alice", **params: str):
    return client.get(f"{GROUPS}/{key}/export", params=params, headers=world.h(who))


def unzip(response) -> tuple[str, dict[str, bytes]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(response.content))
    names = [i.filename for i in zf.infolist()]
    folders = {str(PurePosixPath(n).parent) for n in names}
    assert len(folders) == 1, names
    return folders.pop(), {PurePosixPath(n).name: zf.read(n) for n in names}


def test_the_export_writes_the_environment_each_run_recorded(client: TestClient, world, team_a, session: Session) -> None:
    """Issue 20 item 3: runs.environment (what the worker read from the job's Python) reaches submission.json and requirements.txt."""
    team_a("relu2 baseline", BASELINE_SEEDS, config={"XSA_LAST_N": 3})
    key = team_a("XSA on all 11 layers", GOOD_SEEDS)
    for run in session.scalars(select(Run).where(Run.group_key == key)):
        run.environment = {"python": "3.12.3", "torch": "2.9.1+cu128", "cuda": "12.8", "flash_attn": None,
                           "packages": {"torch": "2.9.1+cu128", "numpy": "2.1.0", "sentencepiece": "0.2.1", "PyYAML": "6.0.2"}}
    session.commit()
    _, files = unzip(export(client, world, key))
    sub = json.loads(files["submission.json"])
    assert (sub["python_version"], sub["pytorch_version"], sub["cuda_version"], sub["flash_attn_version"]) == ("3.12.3", "2.9.1+cu128", "12.8", None)
    lines = files["requirements.txt"].decode().splitlines()
    assert "torch==2.9.1+cu128" in lines and "numpy==2.1.0" in lines


def test_an_eligible_group_exports_file_by_file(client: TestClient, world, team_a, session: Session) -> None:
    base = team_a("relu2 baseline", BASELINE_SEEDS, config={"XSA_LAST_N": 3})
    key = team_a("XSA on all 11 layers", GOOD_SEEDS + [Seed(7, 0, 0, status="FAILED"), Seed(8, 0, 0, status="CANCELLED")])
    r = export(client, world, key, github_id="alice-gh")
    folder, files = unzip(r)
    assert folder == "records/track_10min_16mb/2026-03-23_XSA_on_all_11_layers"
    assert r.headers["content-disposition"] == 'attachment; filename="2026-03-23_XSA_on_all_11_layers.zip"'
    assert list(files) == ["README.md", "submission.json", "train_seed1337.log", "train_seed42.log", "train_seed2025.log",
                           "train_gpt.py", "requirements.txt"]

    runs = list(session.scalars(select(Run).where(Run.group_key == key, Run.status == "SUCCEEDED").order_by(Run.id)))
    stored = {(a.run_id, a.uri.rsplit("/", 1)[-1]): Path(a.uri.removeprefix("file://")).read_bytes()
              for a in session.scalars(select(Artifact).where(Artifact.run_id.in_([r.id for r in runs])))}
    for run in runs:
        assert files[f"train_seed{run.seed}.log"] == stored[(run.id, "train.log")] == log_bytes(run.seed)  # byte for byte
        assert files["train_gpt.py"] == stored[(run.id, "train_gpt.py")] == TRAINER

    sub = json.loads(files["submission.json"], parse_constant=lambda c: pytest.fail(f"{c} in submission.json"))
    assert list(sub) == ["name", "author", "github_id", "date", "track", "val_bpb", "val_bpb_std", "val_loss", "seeds",
                         "seed_results", "bytes_total", "bytes_code", "hardware", "pytorch_version", "python_version", "cuda_version",
                         "flash_attn_version", "compliance", "runs", "p_value", "baseline", "blurb"]
    assert sub["name"] == "XSA on all 11 layers" and sub["author"] == "alice" and sub["github_id"] == "alice-gh"
    assert sub["date"] == "2026-03-23" and sub["track"] == "10min_16mb"
    assert sub["seeds"] == [1337, 42, 2025]
    assert sub["val_bpb"] == pytest.approx(statistics.mean(r.val_bpb for r in runs), abs=1e-12)
    assert sub["val_bpb_std"] == pytest.approx(statistics.stdev(r.val_bpb for r in runs), abs=1e-12)
    assert sub["val_loss"] == pytest.approx(statistics.mean(r.val_loss for r in runs), abs=1e-12)
    assert sub["seed_results"] == {
        str(r.seed): {"val_bpb": r.val_bpb, "val_loss": r.val_loss, "artifact_bytes": r.artifact_bytes, "steps": r.steps,
                      "train_time_s": r.train_seconds, "eval_time_s": r.eval_seconds, "pre_ttt_val_bpb": r.pre_ttt_bpb} for r in runs
    }
    # what the runs reported they ran on, not the spec
    assert sub["hardware"] == "8xNVIDIA H100 80GB HBM3" and sub["pytorch_version"] is None
    assert sub["bytes_total"] == max(r.artifact_bytes for r in runs) and sub["bytes_code"] == len(TRAINER)
    # the README's policy, tested in nats per byte (val_bpb x ln 2)
    expected = compare_policy([(r.val_bpb, r.val_loss) for r in runs], [(s.val_bpb, s.val_loss) for s in BASELINE_SEEDS])
    assert sub["p_value"] == pytest.approx(expected.p_value, rel=1e-9) and sub["p_value"] < 0.01
    assert sub["baseline"] == {"name": "relu2 baseline", "group_key": base}
    assert "override_reason" not in sub and sub["blurb"]

    readme = files["README.md"].decode("utf-8")
    assert readme.startswith("# XSA on all 11 layers\n")
    assert "XSA_LAST_N=11" in readme and "XSA_LAST_N=11 SEED=1337 torchrun --standalone --nproc_per_node=8 train_gpt.py" in readme
    assert "for SEED in 1337 42 2025; do" in readme
    for rule in RULE_NAMES:
        assert f"| {rule} | pass |" in readme
    for run in runs:
        assert f"| {run.seed} | {run.val_bpb:.4f} | {run.val_loss:.4f} |" in readme
        assert f"| artifact_bytes | {run.seed} | pass | 15,900,000 | 16,000,000 |" in readme
    assert f"p = {expected.p_value:.2e}" in readme and "Record-eligible (every check passes and p < 0.01 against the baseline): **yes**" in readme
    assert "seed 7): failed: boom; not counted" in readme and "seed 8): cancelled: boom; not counted" in readme
    assert "override" not in readme.lower()
    assert files["requirements.txt"].decode().splitlines()[2:] == [
        "numpy", "sentencepiece", "torch", "zstandard", "# optional (imported inside try: the script runs without it): flash_attn_3"]

    assert export(client, world, key, github_id="alice-gh").content == r.content  # the same export, the same zip


def test_a_failed_check_needs_an_override_which_lands_in_both_files(client: TestClient, world, team_a) -> None:
    team_a("baseline", BASELINE_SEEDS, config={"XSA_LAST_N": 3})
    key = team_a("too big", [Seed(1, 1.8900, 1.1192), Seed(2, 1.8905, 1.1200, artifact_bytes=16_000_001)])
    r = export(client, world, key)
    assert r.status_code == 409
    msg = r.json()["detail"][0]["msg"]
    assert "artifact_bytes fail: artifact 16,000,001 bytes > 16,000,000" in msg and '--override "reason"' in msg

    reason = "one seed is 1 byte over; résumé of the fix in PR #12"
    _, files = unzip(export(client, world, key, override=reason))
    sub = json.loads(files["submission.json"])
    assert sub["override_reason"] == reason and list(sub)[-1] == "override_reason"
    readme = files["README.md"].decode("utf-8")
    assert f"> Override reason: {reason}" in readme
    assert "> - artifact_bytes fail: artifact 16,000,001 bytes > 16,000,000 (over by 1)" in readme
    assert "| artifact_bytes | 2 | fail | 16,000,001 | 16,000,000 |" in readme


def test_no_baseline_or_other_hardware_is_not_eligible_either(client: TestClient, world, team_a) -> None:
    alone = team_a("first ever", GOOD_SEEDS)
    r = export(client, world, alone)
    assert r.status_code == 409 and "no baseline group to compare against" in r.json()["detail"][0]["msg"]
    # judged from what the runs report (one GPU), not from the spec
    one_gpu = team_a("one gpu", [replace(s, result={"world_size": 1}) for s in GOOD_SEEDS], hardware="H100:1")
    msg = export(client, world, one_gpu).json()["detail"][0]["msg"]
    assert "train_time not comparable" in msg and "eval_time not comparable" in msg
    _, files = unzip(export(client, world, one_gpu, override="exploration on one GPU"))
    assert "--nproc_per_node=1 train_gpt.py" in files["README.md"].decode()


def test_who_may_export(client: TestClient, world, team_a) -> None:
    team_a("baseline", BASELINE_SEEDS, config={"XSA_LAST_N": 3})
    key = team_a("good", GOOD_SEEDS)
    assert export(client, world, key, "aaron").status_code == 200  # team admin
    assert export(client, world, key, "root").status_code == 200  # global admin
    assert export(client, world, key, "bob").status_code == 404  # another team's unpublished group looks absent
    assert export(client, world, key, None).status_code == 401
    assert export(client, world, "0" * 64).status_code == 404
    assert client.post(f"{GROUPS}/{key}/publish", headers=world.h("alice")).status_code == 200
    r = export(client, world, key, "bob")  # published: bob sees it, but only its team exports it
    assert r.status_code == 403


@pytest.mark.parametrize("override", ["", " ", "x" * 501, "two\nlines", "tab\there", "nul\x00"])
def test_a_bad_override_is_422_naming_the_field(client: TestClient, world, team_a, override: str) -> None:
    key = team_a("good", GOOD_SEEDS)
    r = export(client, world, key, override=override)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "override"]


def test_a_missing_stored_log_falls_back_to_the_database_and_says_so(client: TestClient, world, team_a, session: Session) -> None:
    team_a("baseline", BASELINE_SEEDS, config={"XSA_LAST_N": 3})
    key = team_a("good", GOOD_SEEDS)
    run = session.scalars(select(Run).where(Run.group_key == key, Run.seed == 42)).one()
    log = session.scalars(select(Artifact).where(Artifact.run_id == run.id, Artifact.kind == "log")).one()
    Path(log.uri.removeprefix("file://")).unlink()
    _, files = unzip(export(client, world, key))
    assert files["train_seed42.log"] == log_bytes(42).decode("utf-8", errors="replace").encode("utf-8")
    assert files["train_seed1337.log"] == log_bytes(1337)
    readme = files["README.md"].decode()
    assert f"`train_seed42.log`: caddie run {run.id}, rebuilt from caddie's database copy" in readme


def test_seeds_that_ran_different_trainers_are_refused(client: TestClient, world, team_a) -> None:
    team_a("baseline", BASELINE_SEEDS, config={"XSA_LAST_N": 3})
    key = team_a("mixed", [Seed(1, 1.8900, 1.1192), Seed(2, 1.8905, 1.1200, code=TRAINER + b"# patched\n")])
    r = export(client, world, key, override="whatever")
    assert r.status_code == 409
    msg = r.json()["detail"][0]["msg"]
    assert "different train_gpt.py" in msg and "run(s)" in msg


def test_a_run_without_a_stored_trainer_is_refused(client: TestClient, world, team_a, session: Session) -> None:
    key = team_a("good", GOOD_SEEDS)
    run = session.scalars(select(Run).where(Run.group_key == key, Run.seed == 42)).one()
    session.delete(session.scalars(select(Artifact).where(Artifact.run_id == run.id, Artifact.kind == "code")).one())
    session.commit()
    r = export(client, world, key, override="no baseline yet")
    assert r.status_code == 409 and f"run(s) {run.id} stored no train_gpt.py" in r.json()["detail"][0]["msg"]
