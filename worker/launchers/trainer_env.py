"""What reaches the trainer's environment: the one place both launchers ask.

The trainer runs user code (a team's config, later its own script), so its
environment is an allow-list, never the worker's environment minus a deny-list:

* from the worker's environment, only what a training process needs to find
  its tools and GPUs (``inherited_env``): PATH, HOME, the locale, TMPDIR,
  CUDA_*/NCCL_*/TORCH_*-style settings and thread counts. Database URLs,
  broker URLs, API keys and tokens never pass, whatever they are called;
* from the run, its trainer knobs and seed (``knob_env``), names checked
  against the trainer's config; or, for a team's own script, its spec's env
  plus SEED and RUN_ID (``script_env``), no reserved name among them; the
  data, tokenizer and output paths are not
  the run's to set: the launcher sets them from the run's data variant
  (``variant_paths``), relative to the trainer's working folder, so no
  server path is named by a spec or printed in a run's log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from service.runs.scripts.spec import env_name_problem, path_env_problem
from trainer.config import TrainerConfig
from trainer.recipes import PATH_VARS, Recipe, RecipeError, parse_sources, resolve
from worker.launchers.base import LaunchFailed
from worker.launchers.compile_cache import CACHE_VARS

# Exact names taken from the worker's environment.
INHERITED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
})  # fmt: skip
# Name prefixes taken from the worker's environment: locale, GPU selection and
# the collective/compiler settings a node's admin tunes (NCCL_SOCKET_IFNAME, TORCH_NCCL_*, ...).
INHERITED_PREFIXES = ("LC_", "CUDA_", "NCCL_", "TORCH_", "TORCHINDUCTOR_", "TRITON_", "PYTORCH_")
# Knobs the launcher sets itself, never a run: where the data, the tokenizer and the outputs are.
LAUNCHER_KNOBS = TrainerConfig.set_by("launcher")
KNOB_NAMES = frozenset(TrainerConfig.env_name(f) for f in TrainerConfig.knobs())
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the worker's environment a trainer may see (the allow-list above), less the compile
    caches' folders: a folder shared by every job would run one team's compiled code in another's
    (the launcher points them at the team's own, worker.launchers.compile_cache)."""
    return {k: v for k, v in environ.items() if (k in INHERITED_NAMES or k.startswith(INHERITED_PREFIXES)) and k not in CACHE_VARS}


def knob_env(job_env: Mapping[str, object]) -> dict[str, str]:
    """The run's knobs as env vars: trainer knob names only (LaunchFailed otherwise); the launcher's own knobs dropped."""
    out = {}
    for key, value in job_env.items():
        key = str(key)
        if not _ENV_NAME.match(key) or key not in KNOB_NAMES:
            raise LaunchFailed(f"{key!r} is not a trainer knob; a run passes only its knobs to the trainer")
        if key not in LAUNCHER_KNOBS:
            out[key] = str(value)
    return out


# What caddie itself sets in a script run's env (every other reserved name is refused).
SCRIPT_RUN_NAMES = frozenset({"SEED", "RUN_ID"})
# The audit hook (worker/audit/sitecustomize.py, read-only in the repository) that every Python
# process of a script run loads through PYTHONPATH; it appends what the script opens and
# connects to to audit.jsonl in the run folder (the cwd). Only this exact value passes.
AUDIT_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "audit")}


def script_env(job_env: Mapping[str, object], recipe: Recipe | None = None) -> dict[str, str]:
    """A script run's variables as env vars; LaunchFailed for a reserved name (checked when the
    spec was accepted, and again here, where it would reach the process). DATA_PATH and
    TOKENIZER_PATH pass only where the run's data recipe lets a spec set them, inside ./data."""
    out = {}
    for key, value in job_env.items():
        key = str(key)
        if key in PATH_VARS:
            problem = path_env_problem(key, str(value), recipe)
        else:
            problem = None if key in SCRIPT_RUN_NAMES or AUDIT_ENV.get(key) == value else env_name_problem(key)
        if problem:
            raise LaunchFailed(f"{key!r} cannot be set by a script run: {problem}")
        out[key] = str(value)
    return out


def recipe_of(variant: str, sources_setting: str = "", trainer: bool = False) -> Recipe:
    """The data recipe of a run's variant with the deployment's CADDIE_DATA_SOURCES (the shared trainer's own
    where the variant has one, with ``trainer``); LaunchFailed otherwise."""
    try:
        return resolve(variant or "", parse_sources(sources_setting), trainer=trainer)
    except RecipeError as exc:
        raise LaunchFailed(str(exc)) from None


def variant_paths(variant: str) -> tuple[str, str]:
    """(DATA_PATH, TOKENIZER_PATH) of a data variant, relative to a folder whose ``data`` is the recipe's data folder.

    ``sp1024`` -> ``./data/datasets/fineweb10B_sp1024``, ``./data/tokenizers/fineweb_1024_bpe.model``
    (the trainer's own defaults for sp1024, so its config line does not repeat them).
    """
    return recipe_of(variant).env_paths()


def data_env(recipe: Recipe, job_env: Mapping[str, str]) -> dict[str, str]:
    """DATA_PATH and TOKENIZER_PATH of a run: the recipe's, or the spec's own where its recipe lets it
    (script_env has checked them)."""
    data_path, tokenizer_path = recipe.env_paths()
    if recipe.paths_settable:
        data_path, tokenizer_path = job_env.get("DATA_PATH", data_path), job_env.get("TOKENIZER_PATH", tokenizer_path)
    return {"DATA_PATH": data_path, "TOKENIZER_PATH": tokenizer_path}
