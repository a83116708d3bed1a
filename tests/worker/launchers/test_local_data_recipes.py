"""The local launcher and data recipes: a built recipe's run sees its folder (built/<content hash>)
as ./data, with the record's own DATA_PATH/TOKENIZER_PATH; a folder already built is not built again."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.settings import Settings
from trainer.recipes import BUILTIN, built_folder, content_hash, resolve
from worker.launchers.base import JobSpec, LaunchFailed
from worker.launchers.local import LocalLauncher

FILES = {name: f"bytes of {name}".encode() for name in BUILTIN["sp8192_caseops"].run_files()}
REPO = Path(__file__).resolve().parents[3]
PATHS = {"DATA_PATH": "./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved",
         "TOKENIZER_PATH": "./data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"}


def test_a_built_recipe_is_linked_as_the_runs_data_and_not_built_twice(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, sandbox="none")
    launcher = LocalLauncher(settings)
    folder = Path(settings.data_root).resolve() / built_folder(content_hash(BUILTIN["sp8192_caseops"], FILES))
    folder.mkdir(parents=True)  # built by an earlier run on this machine
    job = JobSpec(7, {**PATHS, "CASEOPS_ENABLED": "1"}, "local", 60, "sp8192_caseops",
                  script_files={"train_gpt.py": b"print(1)\n", **FILES})
    work = tmp_path / "work"
    work.mkdir()
    env = launcher._child_env(job, work)
    assert (work / "data").resolve() == folder
    assert {k: env[k] for k in PATHS} == PATHS and env["CASEOPS_ENABLED"] == "1"
    launcher._build_data(job, BUILTIN["sp8192_caseops"], work)  # there already: returns without running anything


def test_the_shared_trainer_on_caseops_data_sees_caddies_own_build(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, sandbox="none")
    recipe = resolve("sp8192_caseops", trainer=True)  # no run files: caddie's own builder
    folder = Path(settings.data_root).resolve() / built_folder(content_hash(recipe))
    folder.mkdir(parents=True)
    job = JobSpec(8, {"CASEOPS_ENABLED": "1"}, "local", 60, "sp8192_caseops")
    work = tmp_path / "work"
    work.mkdir()
    env = LocalLauncher(settings)._child_env(job, work)
    assert (work / "data").resolve() == folder and {k: env[k] for k in PATHS} == PATHS


def test_the_local_launcher_builds_the_shared_trainers_caseops_data_with_caddies_builder(tmp_path: Path) -> None:
    # The documents and the tokenizer already on this machine where the recipe fetches them to (no network here);
    # the build itself runs for real: `trainer.data download --trainer`, then caddie's own `trainer.data caseops`.
    import json

    tokenizer = (REPO.parent / "shared" / "challenge" / "records" / "track_10min_16mb" /
                 "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611" / "tokenizers" /
                 "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
    if not tokenizer.is_file():
        pytest.skip(f"record tokenizer not found at {tokenizer}")
    settings = Settings(home=tmp_path, sandbox="none")
    recipe = resolve("sp8192_caseops", trainer=True)
    root = Path(settings.data_root).resolve()
    docs = root / "docs" / recipe.source.key() / "docs_selected.jsonl"
    docs.parent.mkdir(parents=True)
    docs.write_text("".join(json.dumps({"text": f"Doc {n} of the NASA McDonald set."}) + "\n" for n in range(10_010)))
    assert recipe.tokenizer_source is not None
    local_tokenizer = root / "docs" / recipe.tokenizer_source.key() / recipe.tokenizer_path
    local_tokenizer.parent.mkdir(parents=True)
    local_tokenizer.write_bytes(tokenizer.read_bytes())
    job = JobSpec(9, {"CASEOPS_ENABLED": "1"}, "local", 60, "sp8192_caseops")
    work = tmp_path / "work"
    work.mkdir()
    launcher = LocalLauncher(settings)
    launcher._build_data(job, recipe, work)
    folder = root / built_folder(content_hash(recipe))
    data = folder / "datasets" / "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    assert (data / "fineweb_val_bytes_000000.bin").is_file() and (data / "fineweb_train_000000.bin").is_file()
    assert (folder / recipe.tokenizer_path).read_bytes() == tokenizer.read_bytes()
    launcher._child_env(job, work)
    assert (work / "data").resolve() == folder


def test_a_built_recipe_without_its_files_or_with_a_path_outside_data_fails_at_launch(tmp_path: Path) -> None:
    launcher = LocalLauncher(Settings(home=tmp_path, sandbox="none"))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(LaunchFailed, match="lack"):
        launcher._child_env(JobSpec(7, {}, "local", 60, "sp8192_caseops", script_files={"train_gpt.py": b"x"}), work)
    with pytest.raises(LaunchFailed, match="DATA_PATH"):
        launcher._child_env(JobSpec(7, {"DATA_PATH": "/etc"}, "local", 60, "sp8192_caseops",
                                    script_files={"train_gpt.py": b"x", **FILES}), work)
