"""Data recipes: where a data variant's tokens come from and how they are made (pure: no I/O).

A recipe names

* its **source**: a Hugging Face dataset repository and the folder in it that holds
  ``manifest.json`` (the challenge's own ``willdepueoai/parameter-golf`` / ``datasets`` for
  SP1024; the records from 2026-04 take SP4096 and SP8192 from ``kevclark/parameter-golf``,
  as their READMEs say). A deployment points a variant elsewhere with one setting,
  CADDIE_DATA_SOURCES (``parse_sources``);
* what it **fetches** there: a dataset's shards and tokenizer (by the manifest), or the raw
  documents (``docs_selected.jsonl``) that a build step reads;
* its **tokenizer**: the source's, a file of the run's own (CaseOps ships its model), or a file
  fetched from a tokenizer source of its own;
* an optional **build step**: a script of the run's own files, the helper files it imports,
  and its arguments (``{docs}``, ``{out}`` and ``{tokenizer}`` are filled in on the node); or
  caddie's own builder, a module run as ``python -m`` (the shared trainer's CaseOps data:
  ``trainer.data caseops``, with caddie's own transform);
* where the data lands in the recipe's data folder (what a run sees as ``./data``):
  ``data_path`` and ``tokenizer_path``, and whether a spec may set DATA_PATH/TOKENIZER_PATH
  itself (a record's own command does, for CaseOps).

A variant may have a recipe of its own for the shared trainer (``resolve(..., trainer=True)``):
sp8192_caseops is built by the run's prepare_caseops_data.py for a script run, and by caddie's own
builder over the same documents, with the CaseOps tokenizer fetched from the records' public
repository, for the shared trainer, which has no files of its own.

A downloaded recipe lands in the node's data root in the challenge's layout; a built one in
``built/<content hash>/`` under it, the hash taken over everything that decides its bytes
(source, fetched files, tokenizer bytes, build script and helper bytes, arguments), so a
changed script builds anew and an unchanged one is built once per node.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

CHALLENGE_REPO = "willdepueoai/parameter-golf"  # the challenge's own dataset repository
MATCHED_REPO = "kevclark/parameter-golf"  # SP4096 and SP8192 of the 2026-04 records
DEFAULT_PREFIX = "datasets"  # the folder of a dataset repository that holds manifest.json
DOCS_FILE = "docs_selected.jsonl"  # the challenge's document stream, beside manifest.json
BUILT_DIR = "built"  # under the data root: one folder per built recipe, named by its hash
HASH_VERSION = 1  # bump when the hashed form changes meaning

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_PREFIX_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_PLAIN_VARIANT = re.compile(r"^sp([1-9][0-9]{0,5})$")
_VARIANT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
PATH_VARS = ("DATA_PATH", "TOKENIZER_PATH")  # the env names a recipe may let a spec set


class RecipeError(ValueError):
    """A recipe, a source or a path that cannot be used; the message names the setting or field."""


@dataclass(frozen=True)
class Source:
    """A dataset repository and the folder in it that holds manifest.json ('' = its top)."""

    repo: str
    prefix: str = DEFAULT_PREFIX

    def remote(self, path: str) -> str:
        """A path under the prefix as a path of the repository."""
        return f"{self.prefix}/{path}" if self.prefix else path

    def key(self) -> str:
        """A folder name for this source's local copies (its manifest, its docs)."""
        return re.sub(r"[^A-Za-z0-9._-]", "__", f"{self.repo}/{self.prefix}".strip("/"))

    def describe(self) -> str:
        return f"{self.repo}/{self.prefix}" if self.prefix else self.repo


@dataclass(frozen=True)
class BuildStep:
    """A script of the run's own files, or a module of caddie's own, run once per node over the fetched documents."""

    script: str  # a file of the run, e.g. prepare_caseops_data.py; "" with module
    args: tuple[str, ...]  # {docs}, {out} and {tokenizer} are filled in on the node
    helpers: tuple[str, ...] = ()  # files of the run the script imports (they count in the hash)
    module: str = ""  # caddie's own builder, run as `python -m module args` from caddie's code (no run files)

    def describe(self) -> str:
        return f"caddie's {self.module}" if self.module else self.script


@dataclass(frozen=True)
class Recipe:
    variant: str
    source: Source
    fetch: str  # "dataset": shards + tokenizer by the manifest; "docs": the document stream
    data_path: str  # relative to the recipe's data folder
    tokenizer_path: str  # relative to the recipe's data folder
    dataset: str = ""  # the manifest's dataset name (fetch == "dataset")
    tokenizer_file: str = ""  # a file of the run's own, copied to tokenizer_path ("" = the source's)
    build: BuildStep | None = None
    tokenizer_source: Source | None = None  # where tokenizer_path is fetched from (that path under its prefix)
    paths_settable: bool = False  # a spec may set DATA_PATH / TOKENIZER_PATH (inside the data folder)
    description: str = field(default="", compare=False)

    @property
    def built(self) -> bool:
        return self.build is not None

    def run_files(self) -> tuple[str, ...]:
        """The run's own files this recipe reads (they must be among the spec's files)."""
        names = [self.tokenizer_file] if self.tokenizer_file else []
        if self.build:
            names += [self.build.script, *self.build.helpers]
        return tuple(dict.fromkeys(n for n in names if n))

    def env_paths(self) -> tuple[str, str]:
        """(DATA_PATH, TOKENIZER_PATH) as a run sees them: under ./data, its link to the recipe's folder."""
        return f"./data/{self.data_path}", f"./data/{self.tokenizer_path}"


def plain_recipe(variant: str, source: Source | None = None) -> Recipe:
    """sp<V>: the shards and tokenizer of fineweb10B_sp<V> in the challenge's layout."""
    m = _PLAIN_VARIANT.match(variant)
    if not m:
        raise RecipeError(f"data variant {variant!r}: expected sp<VOCAB_SIZE>, e.g. sp1024, or a named recipe")
    name = f"fineweb10B_{variant}"
    return Recipe(variant=variant, source=source or Source(CHALLENGE_REPO), fetch="dataset", dataset=name,
                  data_path=f"datasets/{name}", tokenizer_path=f"tokenizers/fineweb_{m[1]}_bpe.model",
                  description=f"SentencePiece BPE {m[1]}: shards and tokenizer downloaded")


CASEOPS_NAME = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
CASEOPS_TOKENIZER = "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
# The CaseOps records' public tokenizer and data (the 2026-04-18 CaseOps record's README): datasets/<CASEOPS_TOKENIZER> there.
CASEOPS_TOKENIZER_SOURCE = Source("romeerp/parameter-golf-caseops-v1")
CASEOPS_BUILD_VERSION = "1"  # of trainer/caseops.py and trainer.data's build_caseops: bump when the bytes they write change

# What caddie serves out of the box, each from where the records got it.
BUILTIN: dict[str, Recipe] = {
    "sp1024": plain_recipe("sp1024", Source(CHALLENGE_REPO)),
    "sp4096": plain_recipe("sp4096", Source(MATCHED_REPO)),
    "sp8192": plain_recipe("sp8192", Source(MATCHED_REPO)),
    # The CaseOps records (2026-04-19 on): the challenge's documents, re-tokenized by the record's own
    # prepare_caseops_data.py with the tokenizer it ships, plus the per-token byte sidecar of val.
    "sp8192_caseops": Recipe(
        variant="sp8192_caseops", source=Source(CHALLENGE_REPO), fetch="docs",
        data_path=f"datasets/{CASEOPS_NAME}", tokenizer_path=CASEOPS_TOKENIZER, tokenizer_file=CASEOPS_TOKENIZER,
        build=BuildStep("prepare_caseops_data.py", ("--docs", "{docs}", "--out", "{out}", "--sp", "{tokenizer}"),
                        helpers=("lossless_caps.py",)),
        paths_settable=True,
        description="CaseOps SP8192: the challenge's documents built by the run's prepare_caseops_data.py"),
}  # fmt: skip

# The shared trainer's own recipes, where a variant's is a script run's (resolve(..., trainer=True)).
TRAINER_BUILTIN: dict[str, Recipe] = {
    # CASEOPS_ENABLED: the same documents, built by caddie's own transform (trainer/caseops.py) into the same layout.
    "sp8192_caseops": Recipe(
        variant="sp8192_caseops", source=Source(CHALLENGE_REPO), fetch="docs",
        data_path=f"datasets/{CASEOPS_NAME}", tokenizer_path=CASEOPS_TOKENIZER, tokenizer_source=CASEOPS_TOKENIZER_SOURCE,
        build=BuildStep("", ("caseops", "--docs", "{docs}", "--out", "{out}", "--tokenizer", "{tokenizer}",
                             "--build-version", CASEOPS_BUILD_VERSION), module="trainer.data"),
        description="CaseOps SP8192 for the shared trainer: the challenge's documents built by caddie's own transform"),
}  # fmt: skip


def parse_source(text: str, where: str) -> Source:
    """'owner/name' or 'owner/name/prefix/...' -> Source (prefix 'datasets' when omitted; '/' at the end = the top)."""
    text = text.strip()
    parts = text.split("/")
    if len(parts) < 2:
        raise RecipeError(f"{where}: {text!r} is not owner/name[/prefix] of a dataset repository")
    repo = "/".join(parts[:2])
    if not _REPO_ID.match(repo):
        raise RecipeError(f"{where}: {repo!r} is not a repository id (owner/name: letters, digits, '.', '_', '-')")
    rest = parts[2:]
    if rest == [""]:
        return Source(repo, "")
    if any(not _PREFIX_PART.match(p) for p in rest):
        raise RecipeError(f"{where}: the path {'/'.join(rest)!r} in {text!r} must be folder names (no '..', no empty parts)")
    return Source(repo, "/".join(rest) if rest else DEFAULT_PREFIX)


def parse_sources(text: str, setting: str = "CADDIE_DATA_SOURCES") -> dict[str, Source]:
    """A deployment's source overrides: JSON ``{"sp8192": "owner/name[/prefix]"}`` (a value may also be
    ``{"repo": ..., "prefix": ...}``) or a list ``sp8192=owner/name[/prefix],sp4096=...``; '' = none."""
    text = (text or "").strip()
    if not text:
        return {}
    pairs: list[tuple[str, Any]]
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise RecipeError(f"{setting}: not valid JSON ({exc})") from None
        pairs = list(raw.items())
    else:
        pairs = []
        for item in (i.strip() for i in re.split(r"[,\n]", text)):
            if not item:
                continue
            variant, sep, value = item.partition("=")
            if not sep:
                raise RecipeError(f"{setting}: {item!r} is not variant=owner/name[/prefix]")
            pairs.append((variant.strip(), value.strip()))
    out: dict[str, Source] = {}
    for variant, value in pairs:
        where = f"{setting}[{variant}]"
        if not isinstance(variant, str) or not _VARIANT_NAME.match(variant):
            raise RecipeError(f"{setting}: {variant!r} is not a data variant name (lower-case letters, digits, '_')")
        if variant not in BUILTIN and not _PLAIN_VARIANT.match(variant):
            raise RecipeError(f"{where}: no recipe {variant!r}; a new variant must be sp<VOCAB_SIZE> (known: {', '.join(BUILTIN)})")
        if isinstance(value, dict):
            extra = set(value) - {"repo", "prefix"}
            if extra or not isinstance(value.get("repo"), str):
                raise RecipeError(f"{where}: expected {{\"repo\": \"owner/name\", \"prefix\": \"datasets\"}}")
            prefix = value.get("prefix", DEFAULT_PREFIX)
            source = parse_source(f"{value['repo']}/{prefix}" if prefix else f"{value['repo']}/", where)
        elif isinstance(value, str):
            source = parse_source(value, where)
        else:
            raise RecipeError(f"{where}: expected \"owner/name[/prefix]\"")
        out[variant] = source
    return out


def resolve(variant: str, sources: Mapping[str, Source] | None = None, trainer: bool = False) -> Recipe:
    """The recipe of a variant: built in (the shared trainer's own where it has one, with ``trainer``), or
    sp<V>, with the deployment's source when it names one."""
    source = (sources or {}).get(variant)
    recipe = (TRAINER_BUILTIN.get(variant) if trainer else None) or BUILTIN.get(variant)
    if recipe is None:
        if not _PLAIN_VARIANT.match(variant or ""):
            raise RecipeError(f"data variant {variant!r}: no such recipe (known: {', '.join(BUILTIN)}, or sp<VOCAB_SIZE>)")
        recipe = plain_recipe(variant)
    return replace(recipe, source=source) if source else recipe


def content_hash(recipe: Recipe, files: Mapping[str, bytes] | None = None) -> str:
    """sha256 over what decides a recipe's bytes: source, what it fetches, the bytes of the run's files
    it reads (tokenizer, build script, helpers) and the arguments. RecipeError names a missing file."""
    files = files or {}
    missing = [n for n in recipe.run_files() if n not in files]
    if missing:
        raise RecipeError(f"data {recipe.variant}: the run's files lack {', '.join(missing)} (the recipe reads them)")
    form: dict[str, Any] = {
        "v": HASH_VERSION, "source": [recipe.source.repo, recipe.source.prefix], "fetch": recipe.fetch,
        "dataset": recipe.dataset, "data_path": recipe.data_path, "tokenizer_path": recipe.tokenizer_path,
        "files": {n: hashlib.sha256(files[n]).hexdigest() for n in recipe.run_files()},
        "tokenizer_file": recipe.tokenizer_file,
        "build": None if recipe.build is None else {"script": recipe.build.script, "args": list(recipe.build.args),
                                                    "helpers": list(recipe.build.helpers)},
    }  # fmt: skip
    # only when set, so the hashes of the recipes that have neither (folders built already) stay as they were
    if recipe.build is not None and recipe.build.module:
        form["build"]["module"] = recipe.build.module
    if recipe.tokenizer_source is not None:
        form["tokenizer_source"] = [recipe.tokenizer_source.repo, recipe.tokenizer_source.prefix]
    return hashlib.sha256(json.dumps(form, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def built_folder(content: str) -> str:
    """Where a built recipe lives, relative to the data root."""
    return f"{BUILT_DIR}/{content[:24]}"


def build_argv(step: BuildStep, docs: str, out: str, tokenizer: str) -> list[str]:
    """The build script's arguments with the node's paths filled in (plain replacement: no format syntax)."""
    fill = {"{docs}": docs, "{out}": out, "{tokenizer}": tokenizer}
    args = []
    for a in step.args:
        for k, v in fill.items():
            a = a.replace(k, v)
        args.append(a)
    return args


def data_path_problem(value: str) -> str | None:
    """Why a DATA_PATH/TOKENIZER_PATH a spec sets is not inside the run's data folder (./data), or None."""
    if not value or len(value) > 500 or "\x00" in value or "\\" in value:
        return "must be a path of 1 to 500 characters inside ./data (no NUL, no '\\')"
    if value.startswith("/"):
        return "must be relative, inside ./data (e.g. ./data/datasets/<name>); a spec never names a node's path"
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "must stay inside ./data: no '..'"
    norm = posixpath.normpath(value)
    if not norm.startswith("data/") or norm == "data/":
        return "must be inside ./data, the run's data folder (e.g. ./data/datasets/<name>)"
    return None
