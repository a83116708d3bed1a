"""Data recipes: resolution with a deployment's overrides, the content hash, the download planner
against local stand-ins for the dataset repositories, and the build step's cache (a real script)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.data import BuildFailed, build_recipe, download, prepare_data, read_shard, write_shard
from trainer.recipes import (
    BUILTIN,
    CHALLENGE_REPO,
    MATCHED_REPO,
    BuildStep,
    Recipe,
    RecipeError,
    Source,
    content_hash,
    data_path_problem,
    parse_sources,
    resolve,
)

REPO = Path(__file__).resolve().parents[2]


# --- resolution and overrides -----------------------------------------------------------------


def test_builtin_variants_come_from_where_the_records_got_them():
    assert resolve("sp1024").source == Source(CHALLENGE_REPO, "datasets")
    assert resolve("sp4096").source == Source(MATCHED_REPO, "datasets")
    assert resolve("sp8192").source == Source(MATCHED_REPO, "datasets")
    sp8192 = resolve("sp8192")
    assert sp8192.env_paths() == ("./data/datasets/fineweb10B_sp8192", "./data/tokenizers/fineweb_8192_bpe.model")
    assert not sp8192.built and not sp8192.paths_settable
    caseops = resolve("sp8192_caseops")
    assert caseops.built and caseops.paths_settable and caseops.fetch == "docs"
    assert caseops.run_files() == ("tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model",
                                   "prepare_caseops_data.py", "lossless_caps.py")
    # what the 2026-04-27 record's own command sets
    assert caseops.env_paths() == ("./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved",
                                   "./data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
    assert resolve("sp2048").source == Source(CHALLENGE_REPO)  # any sp<V>: the challenge's layout
    with pytest.raises(RecipeError, match="no such recipe"):
        resolve("gpt2")


def test_a_deployment_overrides_sources_as_a_list_or_as_json():
    listed = parse_sources("sp8192=acme/mirror, sp1024=acme/golf/v2/data,sp4096=acme/top/")
    assert listed == {"sp8192": Source("acme/mirror", "datasets"), "sp1024": Source("acme/golf", "v2/data"),
                      "sp4096": Source("acme/top", "")}
    as_json = parse_sources('{"sp8192": "acme/mirror", "sp8192_caseops": {"repo": "acme/docs", "prefix": "raw"}}')
    assert as_json == {"sp8192": Source("acme/mirror", "datasets"), "sp8192_caseops": Source("acme/docs", "raw")}
    assert resolve("sp8192", as_json).source == Source("acme/mirror", "datasets")
    assert resolve("sp8192_caseops", as_json).source == Source("acme/docs", "raw")
    assert resolve("sp8192_caseops", as_json).build == BUILTIN["sp8192_caseops"].build  # only the source moves
    assert resolve("sp1024", as_json) == BUILTIN["sp1024"]
    assert parse_sources("") == {} and parse_sources("  ") == {}


@pytest.mark.parametrize("text, match", [
    ("sp8192", "not variant=owner/name"),
    ("sp8192=noslash", "not owner/name"),
    ("sp8192=a/b/../c", "folder names"),
    ("sp8192=a b/c", "not a repository id"),
    ("gpt2=a/b", "no recipe 'gpt2'"),
    ("SP8192=a/b", "not a data variant name"),
    ("{nope", "not valid JSON"),
    ('{"sp8192": {"repo": "a/b", "branch": "x"}}', "expected"),
    ('{"sp8192": 3}', "expected"),
])  # fmt: skip
def test_bad_overrides_name_the_setting_and_the_variant(text, match):
    with pytest.raises(RecipeError, match=match) as err:
        parse_sources(text)
    assert "CADDIE_DATA_SOURCES" in str(err.value)


def test_the_content_hash_follows_every_input_and_nothing_else():
    caseops = BUILTIN["sp8192_caseops"]
    files = {n: n.encode() for n in caseops.run_files()}
    base = content_hash(caseops, files)
    assert content_hash(caseops, dict(files)) == base  # deterministic
    assert content_hash(caseops, {**files, "unrelated.py": b"x"}) == base  # files it does not read do not count
    assert content_hash(caseops, {**files, "prepare_caseops_data.py": b"changed"}) != base
    assert content_hash(caseops, {**files, "lossless_caps.py": b"changed"}) != base
    assert content_hash(caseops, {**files, caseops.run_files()[0]: b"other model"}) != base
    assert content_hash(resolve("sp8192_caseops", {"sp8192_caseops": Source("acme/docs")}), files) != base
    other_args = Recipe(**{**caseops.__dict__, "build": BuildStep("prepare_caseops_data.py", ("--docs", "{docs}"), ("lossless_caps.py",))})
    assert content_hash(other_args, files) != base
    with pytest.raises(RecipeError, match="lack lossless_caps.py"):
        content_hash(caseops, {k: v for k, v in files.items() if k != "lossless_caps.py"})
    assert content_hash(BUILTIN["sp1024"]) != content_hash(BUILTIN["sp4096"])


@pytest.mark.parametrize("value, ok", [
    ("./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved", True),
    ("data/tokenizers/x.model", True),
    ("./data/a/./b", True),
    ("/home/u/data/x", False),
    ("./data/../etc/passwd", False),
    ("./data", False),
    ("./elsewhere/x", False),
    ("data\\x", False),
    ("", False),
])  # fmt: skip
def test_paths_a_spec_sets_stay_inside_the_data_folder(value, ok):
    assert (data_path_problem(value) is None) is ok


# --- download: the planner against local stand-ins for the repositories --------------------------


def _fake_repo(root: Path, vocab: int, prefix: str = "datasets", train_shards: int = 2, fill: int = 0) -> None:
    """A folder shaped like a Hugging Face dataset repository: manifest, shards and tokenizer under prefix."""
    base = root / prefix if prefix else root
    name = f"fineweb10B_sp{vocab}"
    for n in range(train_shards):
        write_shard(base / "datasets" / name / f"fineweb_train_{n:06d}.bin", np.full(16, fill + n))
    write_shard(base / "datasets" / name / "fineweb_val_000000.bin", np.full(8, fill))
    (base / "tokenizers").mkdir(parents=True, exist_ok=True)
    (base / "tokenizers" / f"fineweb_{vocab}_bpe.vocab").write_text(f"from {root.name}\n")
    manifest = {"datasets": [{"name": name, "tokenizer_name": f"tok{vocab}", "stats": {"files_train": train_shards, "files_val": 1}}],
                "tokenizers": [{"name": f"tok{vocab}", "vocab_path": f"tokenizers/fineweb_{vocab}_bpe.vocab"}]}
    (base / "manifest.json").write_text(json.dumps(manifest))


class Repos:
    """Local folders standing in for Hugging Face repositories (repos/<owner>/<name>): fetcher(source)
    copies the asked file out of the source's folder, and records which repository was asked."""

    def __init__(self, root: Path):
        self.root, self.asked = root, []

    def __call__(self, source: Source):
        def fetch(remote: str, local: Path) -> None:
            self.asked.append((source.repo, remote))
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.root / source.repo / remote, local)
        return fetch


def test_download_takes_each_variant_from_its_source_and_keeps_their_manifests_apart(tmp_path):
    repos = Repos(tmp_path / "repos")
    _fake_repo(repos.root / CHALLENGE_REPO, 1024)
    _fake_repo(repos.root / MATCHED_REPO, 8192, fill=100)
    out = tmp_path / "data"
    download("sp1024", 2, out, fetcher=repos, log=lambda m: None, recipe=resolve("sp1024"))
    download("sp8192", 1, out, fetcher=repos, log=lambda m: None, recipe=resolve("sp8192"))
    assert {repo for repo, _ in repos.asked if "sp8192" in _} == {MATCHED_REPO}
    assert {repo for repo, _ in repos.asked if "sp1024" in _} == {CHALLENGE_REPO}
    assert read_shard(out / "datasets" / "fineweb10B_sp8192" / "fineweb_train_000000.bin")[0] == 100
    assert (out / "tokenizers" / "fineweb_8192_bpe.vocab").read_text() == "from parameter-golf\n"
    # one manifest per source: the challenge's (no sp8192 in it) never hides kevclark's
    assert sorted(p.parent.name for p in (out / "manifests").glob("*/manifest.json")) == [
        "kevclark__parameter-golf__datasets", "willdepueoai__parameter-golf__datasets"]
    assert json.loads((out / "sources.json").read_text()) == {
        "fineweb10B_sp1024": f"{CHALLENGE_REPO}/datasets", "fineweb10B_sp8192": f"{MATCHED_REPO}/datasets"}


def test_an_overridden_source_with_its_own_prefix_is_fetched_whole_again(tmp_path):
    repos = Repos(tmp_path / "repos")
    _fake_repo(repos.root / MATCHED_REPO, 8192, fill=100)
    _fake_repo(repos.root / "acme/mirror", 8192, prefix="v2/data", fill=200)
    out = tmp_path / "data"
    download("sp8192", 1, out, fetcher=repos, log=lambda m: None, recipe=resolve("sp8192"))
    repos.asked.clear()
    logs: list[str] = []
    recipe = resolve("sp8192", parse_sources("sp8192=acme/mirror/v2/data"))
    folder = prepare_data(recipe, 1, out, fetcher=repos, log=logs.append)
    assert folder == out
    assert {repo for repo, _ in repos.asked} == {"acme/mirror"}
    assert all(remote.startswith("v2/data/") for _, remote in repos.asked)
    assert read_shard(out / "datasets" / "fineweb10B_sp8192" / "fineweb_train_000000.bin")[0] == 200
    assert any("fetching it again from acme/mirror/v2/data" in m for m in logs)
    repos.asked.clear()
    prepare_data(recipe, 1, out, fetcher=repos, log=logs.append)  # same source: only the manifest is asked again
    assert repos.asked == [("acme/mirror", "v2/data/manifest.json")]


# --- build: once per node, by content hash, with a tiny real script ----------------------------------

BUILD_SCRIPT = '''
import argparse, json, os, pathlib, sys
import numpy as np
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from helper import transform  # a helper file of the run, as lossless_caps.py is for CaseOps

ap = argparse.ArgumentParser()
ap.add_argument("--docs"); ap.add_argument("--out"); ap.add_argument("--sp"); ap.add_argument("--count")
a = ap.parse_args()
with open(a.count, "a") as fh:
    fh.write("built\\n")
docs = [json.loads(line)["text"] for line in open(a.docs)]
assert open(a.sp, "rb").read() == b"tokenizer bytes"
folder = pathlib.Path(a.out) / "datasets" / "fineweb10B_tiny"
folder.mkdir(parents=True)
def shard(name, toks):
    header = np.zeros(256, dtype="<i4"); header[0], header[1], header[2] = 20240520, 1, len(toks)
    (folder / name).write_bytes(header.tobytes() + np.asarray(toks, dtype="<u2").tobytes())
shard("fineweb_val_000000.bin", [transform(len(d)) for d in docs[:1]])
shard("fineweb_train_000000.bin", [transform(len(d)) for d in docs[1:]])
'''


def _tiny_recipe(count: Path, source: Source = Source(CHALLENGE_REPO)) -> Recipe:
    return Recipe(variant="tiny", source=source, fetch="docs", data_path="datasets/fineweb10B_tiny",
                  tokenizer_path="tokenizers/tiny.model", tokenizer_file="tok/tiny.model",
                  build=BuildStep("prep.py", ("--docs", "{docs}", "--out", "{out}", "--sp", "{tokenizer}", "--count", str(count)),
                                  helpers=("helper.py",)),
                  paths_settable=True)


def _run_files(folder: Path, script: str = BUILD_SCRIPT, helper: str = "def transform(n):\n    return n\n") -> Path:
    (folder / "tok").mkdir(parents=True, exist_ok=True)
    (folder / "prep.py").write_text(script)
    (folder / "helper.py").write_text(helper)
    (folder / "tok" / "tiny.model").write_bytes(b"tokenizer bytes")
    (folder / "train_gpt.py").write_text("print('not part of the recipe')\n")
    return folder


def test_a_build_runs_once_per_content_and_again_when_the_script_changes(tmp_path):
    repos = Repos(tmp_path / "repos")
    docs = repos.root / CHALLENGE_REPO / "datasets" / "docs_selected.jsonl"
    docs.parent.mkdir(parents=True)
    docs.write_text("".join(json.dumps({"text": "x" * n}) + "\n" for n in (3, 5, 7)))
    count, out = tmp_path / "count.txt", tmp_path / "data"
    recipe = _tiny_recipe(count)
    run_a = _run_files(tmp_path / "run-a")
    folder = build_recipe(recipe, run_a, out, fetcher=repos, log=lambda m: None)
    assert folder.parent == out / "built" and count.read_text() == "built\n"
    assert read_shard(folder / "datasets/fineweb10B_tiny/fineweb_val_000000.bin").tolist() == [3]
    assert read_shard(folder / "datasets/fineweb10B_tiny/fineweb_train_000000.bin").tolist() == [5, 7]
    assert (folder / "tokenizers/tiny.model").read_bytes() == b"tokenizer bytes"
    assert json.loads((folder / "recipe.json").read_text())["variant"] == "tiny"

    # another run with the same bytes (train_gpt.py may differ): the same folder, no second build, no second fetch
    run_b = _run_files(tmp_path / "run-b")
    (run_b / "train_gpt.py").write_text("print('another script')\n")
    fetched = len(repos.asked)
    logs: list[str] = []
    assert build_recipe(recipe, run_b, out, fetcher=repos, log=logs.append) == folder
    assert count.read_text() == "built\n" and len(repos.asked) == fetched and "built already" in logs[0]

    # a changed helper is a changed recipe: built again into its own folder, documents not fetched again
    run_c = _run_files(tmp_path / "run-c", helper="def transform(n):\n    return n + 1\n")
    other = build_recipe(recipe, run_c, out, fetcher=repos, log=lambda m: None)
    assert other != folder and count.read_text() == "built\nbuilt\n" and len(repos.asked) == fetched
    assert read_shard(other / "datasets/fineweb10B_tiny/fineweb_val_000000.bin").tolist() == [4]
    assert read_shard(folder / "datasets/fineweb10B_tiny/fineweb_val_000000.bin").tolist() == [3]  # the first is kept


def test_a_failing_or_empty_build_says_so_and_leaves_no_folder(tmp_path):
    repos = Repos(tmp_path / "repos")
    docs = repos.root / CHALLENGE_REPO / "datasets" / "docs_selected.jsonl"
    docs.parent.mkdir(parents=True)
    docs.write_text(json.dumps({"text": "abc"}) + "\n")
    out = tmp_path / "data"
    recipe = _tiny_recipe(tmp_path / "count.txt")
    broken = _run_files(tmp_path / "broken", script="import sys\nprint('no docs here')\nsys.exit(3)\n")
    with pytest.raises(BuildFailed, match=r"prep.py exited with code 3: no docs here"):
        build_recipe(recipe, broken, out, fetcher=repos, log=lambda m: None)
    lazy = _run_files(tmp_path / "lazy", script="print('did nothing')\n")
    with pytest.raises(BuildFailed, match="finished but datasets/fineweb10B_tiny holds no fineweb_val"):
        build_recipe(recipe, lazy, out, fetcher=repos, log=lambda m: None)
    missing = _run_files(tmp_path / "missing")
    (missing / "helper.py").unlink()
    with pytest.raises(BuildFailed, match="the run has no helper.py"):
        build_recipe(recipe, missing, out, fetcher=repos, log=lambda m: None)
    assert not [p for p in (out / "built").iterdir() if p.is_dir()]


def test_the_download_command_prints_where_a_built_recipe_put_its_data(tmp_path):
    # CaseOps without its files: one error line naming what to give (no network needed to get there)
    r = subprocess.run([sys.executable, "-m", "trainer.data", "download", "--variant", "sp8192_caseops", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "give --files DIR" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "trainer.data", "download", "--variant", "sp8192", "--sources", "sp8192=bad",
                        "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "CADDIE_DATA_SOURCES[sp8192]" in r.stderr
