"""A script spec's data recipe: a built recipe needs its files among the run's, and only a recipe
that says so lets a spec set DATA_PATH/TOKENIZER_PATH, inside ./data (checked at submit and again
where the env reaches the process)."""

from __future__ import annotations

import base64

import pytest

from service.core.errors import InvalidInput
from service.runs.scripts.spec import ScriptLimits, check_script_spec
from trainer.recipes import BUILTIN, resolve
from worker.launchers.base import LaunchFailed
from worker.launchers.trainer_env import data_env, script_env

LIMITS = ScriptLimits(file_bytes=1 << 20, total_bytes=1 << 22, files=16, env_vars=64, env_value_chars=4096,
                      variants=["sp1024", "sp8192", "sp8192_caseops"])
CASEOPS_FILES = [(name, base64.b64encode(name.encode()).decode()) for name in BUILTIN["sp8192_caseops"].run_files()]
SCRIPT = base64.b64encode(b"print('x')\n").decode()
RECORD_PATHS = {"DATA_PATH": "./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved",
                "TOKENIZER_PATH": "./data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"}


def _issues(**kw: object) -> dict[tuple, str]:
    args = {"script": SCRIPT, "files": [], "env": {}, "data": "sp1024", "limits": LIMITS, **kw}
    with pytest.raises(InvalidInput) as err:
        check_script_spec(**args)  # type: ignore[arg-type]
    return {tuple(i.loc): i.msg for i in err.value.issues}


def test_the_caseops_record_command_is_accepted_with_its_own_paths() -> None:
    spec, _ = check_script_spec(SCRIPT, CASEOPS_FILES, {**RECORD_PATHS, "CASEOPS_ENABLED": 1}, "sp8192_caseops", LIMITS)
    assert spec.data == "sp8192_caseops" and spec.env["DATA_PATH"] == RECORD_PATHS["DATA_PATH"]
    recipe = resolve("sp8192_caseops")
    env = script_env(spec.env, recipe)
    assert data_env(recipe, env) == RECORD_PATHS
    assert data_env(recipe, {}) == RECORD_PATHS  # the recipe's own, where the spec sets none


def test_a_built_recipe_names_the_files_it_lacks() -> None:
    issues = _issues(files=CASEOPS_FILES[:1], data="sp8192_caseops")
    assert "add prepare_caseops_data.py, lossless_caps.py" in issues[("files",)]


@pytest.mark.parametrize("value, words", [
    ("/home/node/data/x", "must be relative"),
    ("./data/../../etc", "no '..'"),
    ("./elsewhere", "inside ./data"),
])  # fmt: skip
def test_paths_outside_the_data_folder_are_refused_naming_the_field(value: str, words: str) -> None:
    issues = _issues(files=CASEOPS_FILES, data="sp8192_caseops", env={"DATA_PATH": value})
    assert words in issues[("env", "DATA_PATH")]
    with pytest.raises(LaunchFailed, match="DATA_PATH"):
        script_env({"DATA_PATH": value}, resolve("sp8192_caseops"))


def test_a_downloaded_recipe_keeps_the_paths_caddies() -> None:
    issues = _issues(data="sp8192", env=dict(RECORD_PATHS))
    assert "reserved" in issues[("env", "DATA_PATH")] and "reserved" in issues[("env", "TOKENIZER_PATH")]
    with pytest.raises(LaunchFailed, match="reserved"):
        script_env({"DATA_PATH": "./data/x"}, resolve("sp8192"))
    with pytest.raises(LaunchFailed, match="reserved"):
        script_env({"DATA_PATH": "./data/x"})  # no recipe given: as before
