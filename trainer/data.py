"""Token data: the challenge's shard format, the training stream, val tokens, and corpora.

Shard format (``fineweb_{train,val}_NNNNNN.bin``): a header of 256 little-endian int32
(magic 20240520, version 1, token count N, the rest zero), then N little-endian uint16
tokens. The file size is exactly 1024 + 2·N bytes; anything else is a corrupt shard.

Layout of a data folder DIR (what ``TrainerConfig``'s defaults expect with DIR=./data):
``DIR/datasets/fineweb10B_sp{V}/fineweb_{train,val}_NNNNNN.bin`` and
``DIR/tokenizers/fineweb_{V}_bpe.model``.

Command line (``python -m trainer.data``):
  download --variant V --train-shards N [--out DIR] [--files RUN_DIR]   a data recipe (trainer.recipes):
      shards and tokenizer from its source's Hugging Face repository, or built once by the run's own
      script into DIR/built/<content hash>; prints DATA_FOLDER, DATA_PATH, TOKENIZER_PATH
  build --input FILES... --vocab-size V [--out DIR] [--shard-tokens N]   tokenizer + shards from local text
  caseops --docs FILES... --tokenizer MODEL [--out DIR] [--val-docs N]   CaseOps SP8192 shards + val byte sidecar
      (the 2026-04-27 record's data, built with trainer/caseops.py) in DIR/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved
  smoke [--out DIR]                                         a small offline corpus from Python's own docs

CaseOps data (CASEOPS_ENABLED) adds ``fineweb_val_bytes_NNNNNN.bin`` beside the val shards: the shard
format again, one uint16 per val token, its original UTF-8 bytes (bpb.py counts bpb from them).
"""

from __future__ import annotations

import argparse
import array
import ast
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import sentencepiece as spm
import torch

from trainer.recipes import (
    BUILTIN,
    CASEOPS_BUILD_VERSION,
    CASEOPS_NAME,
    CASEOPS_TOKENIZER,
    DOCS_FILE,
    Recipe,
    Source,
    build_argv,
    built_folder,
    content_hash,
    parse_sources,
    resolve,
)

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4
SHARD_MAX_TOKENS = 100_000_000  # tokens per shard written by `build`, as in the challenge
HF_DATA_REPO = "willdepueoai/parameter-golf"  # the challenge's own (trainer.recipes.CHALLENGE_REPO)
HF_DATA_PREFIX = "datasets"  # everything in the repo lives under this folder
VAL_BYTES_PREFIX = "fineweb_val_bytes_"  # CaseOps: the val split's per-token original byte counts, in the shard format
CASEOPS_VAL_DOCS = 10_000  # the CaseOps records' val split: the first 10,000 documents
CASEOPS_SHARD_TOKENS = 10_000_000  # tokens per shard in the CaseOps records' layout


class ShardError(ValueError):
    """A shard file is missing or corrupt; the message names the file and the problem."""


# --- shard format ------------------------------------------------------------------


def read_shard_header(path: str | os.PathLike) -> int:
    """Check a shard's header and size against each other; return its token count."""
    path = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            raw = fh.read(SHARD_HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(f"{path}: no such shard file") from None
    if size < SHARD_HEADER_BYTES:
        raise ShardError(f"{path}: too small for the {SHARD_HEADER_BYTES}-byte header ({size} bytes)")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != SHARD_MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {SHARD_MAGIC}); not a token shard")
    if header[1] != SHARD_VERSION:
        raise ShardError(f"{path}: unsupported version {int(header[1])} (expected {SHARD_VERSION})")
    count = int(header[2])
    if count < 0:
        raise ShardError(f"{path}: negative token count {count} in the header")
    expected = SHARD_HEADER_BYTES + 2 * count
    if size < expected:
        raise ShardError(f"{path}: truncated: header says {count} tokens ({expected} bytes) but the file has {size} bytes")
    if size > expected:
        raise ShardError(f"{path}: {size - expected} trailing bytes after the {count} tokens the header declares")
    return count


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """All tokens of one shard as a uint16 array (header and size verified first)."""
    count = read_shard_header(path)
    with open(path, "rb") as fh:
        fh.seek(SHARD_HEADER_BYTES)
        tokens = np.fromfile(fh, dtype="<u2", count=count)
    if tokens.size != count:  # the file shrank under us
        raise ShardError(f"{path}: truncated while reading ({tokens.size} of {count} tokens)")
    return tokens.astype(np.uint16, copy=False)


def write_shard(path: str | os.PathLike, tokens: Sequence[int] | np.ndarray | torch.Tensor) -> None:
    """Write tokens (each in [0, 65535]) as one shard; atomic (temp file, then rename)."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(f"{path}: token ids must be in [0, 65535] to fit uint16 (got {arr.min()}..{arr.max()})")
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, arr.size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header.tobytes())
        fh.write(arr.astype("<u2").tobytes())
    os.replace(tmp, path)


def shard_files(pattern: str) -> list[str]:
    """Token shard paths matching a glob, sorted (shard order is stream order). CaseOps byte sidecars
    (fineweb_val_bytes_*.bin) match the val glob too; they are counts, not tokens, and are left out."""
    files = sorted(f for f in glob.glob(pattern) if not os.path.basename(f).startswith(VAL_BYTES_PREFIX))
    if not files:
        raise ShardError(f"{pattern}: no shard files match")
    return files


# --- training stream and val tokens ------------------------------------------------------


class TokenStream:
    """The train shards read in order as one endless stream (wrapping to the first shard).

    Every call takes the next global batch of ``world_size * (local + 1)`` tokens, where
    ``local = global_tokens / world_size``; rank r uses its contiguous span
    ``[r·(local+1), (r+1)·(local+1))``: inputs are the span's first ``local`` tokens,
    targets the same shifted by one. One rank with k micro-batches therefore sees exactly
    the sequences that k ranks see in one step.
    """

    def __init__(self, pattern: str, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.files = shard_files(pattern)
        for f in self.files:  # fail now, not an hour into the run
            if read_shard_header(f) == 0:
                raise ShardError(f"{f}: empty shard (0 tokens)")
        self.rank, self.world_size = rank, world_size
        self.file_index = 0
        self.tokens = read_shard(self.files[0])
        self.pos = 0

    def _advance_file(self) -> None:
        self.file_index = (self.file_index + 1) % len(self.files)
        self.tokens = read_shard(self.files[self.file_index])
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        """The next n tokens of the stream."""
        parts: list[np.ndarray] = []
        while n > 0:
            if self.pos >= self.tokens.size:
                self._advance_file()
            k = min(n, self.tokens.size - self.pos)
            parts.append(self.tokens[self.pos:self.pos + k])
            self.pos += k
            n -= k
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def next_batch(self, global_tokens: int, seq_len: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape [global_tokens / world_size / seq_len, seq_len] on device."""
        local = global_tokens // self.world_size
        if local * self.world_size != global_tokens or local % seq_len or local == 0:
            raise ValueError(f"a global batch of {global_tokens} tokens does not split into {self.world_size} rank(s) "
                             f"of whole {seq_len}-token sequences")
        chunk = self.take(self.world_size * (local + 1))
        span = torch.from_numpy(chunk[self.rank * (local + 1):(self.rank + 1) * (local + 1)].astype(np.int64))
        device = torch.device(device)
        if device.type == "cuda":
            span = span.pin_memory().to(device, non_blocking=True)
        x, y = span[:-1].view(-1, seq_len), span[1:].view(-1, seq_len)
        return x, y


def load_val_tokens(pattern: str, limit: int = 0) -> torch.Tensor:
    """All val shards concatenated in order as a 1-D int64 tensor (the first ``limit`` tokens if > 0)."""
    parts: list[np.ndarray] = []
    have = 0
    for f in shard_files(pattern):
        parts.append(read_shard(f))
        have += parts[-1].size
        if limit and have >= limit:
            break
    tokens = np.concatenate(parts) if parts else np.zeros(0, np.uint16)
    if limit:
        tokens = tokens[:limit]
    if tokens.size < 2:
        raise ShardError(f"{pattern}: only {tokens.size} val token(s); need at least 2 to score anything")
    return torch.from_numpy(tokens.astype(np.int64))


def load_val_bytes(data_path: str | os.PathLike, val_tokens: int, limit: int = 0) -> torch.Tensor:
    """CaseOps: the val byte sidecar (fineweb_val_bytes_*.bin beside the val shards, one count per val
    token) as int32, its first ``limit`` counts if > 0. ``val_tokens`` is the whole val split's token
    count; a sidecar of another length belongs to another build and is refused."""
    pattern = os.path.join(str(data_path), f"{VAL_BYTES_PREFIX}*.bin")
    files = sorted(glob.glob(pattern))
    if not files:
        raise ShardError(f"{pattern}: no byte sidecar (CASEOPS_ENABLED scores bpb on the original bytes it counts; "
                         f"build the data with `python -m trainer.data caseops`)")
    counts = np.concatenate([read_shard(f) for f in files])
    if counts.size != val_tokens:
        raise ShardError(f"{pattern}: {counts.size} byte counts for {val_tokens} val tokens: the sidecar is not this val split's")
    if limit:
        counts = counts[:limit]
    return torch.from_numpy(counts.astype(np.int32))


# --- folder layout -----------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusPaths:
    """Where a corpus lives: the shard folder and the tokenizer (TrainerConfig's DATA_PATH, TOKENIZER_PATH)."""

    root: Path
    data_path: Path
    tokenizer_path: Path
    vocab_size: int
    train_files: tuple[Path, ...] = ()
    val_files: tuple[Path, ...] = ()


def dataset_dir_name(variant: str) -> str:
    """``sp1024`` -> ``fineweb10B_sp1024``."""
    if not (variant.startswith("sp") and variant[2:].isdigit()):
        raise ValueError(f"--variant {variant!r}: expected sp<VOCAB_SIZE>, e.g. sp1024")
    return f"fineweb10B_{variant}"


def corpus_paths(out_dir: str | os.PathLike, vocab_size: int) -> CorpusPaths:
    root = Path(out_dir)
    return CorpusPaths(root=root, data_path=root / "datasets" / dataset_dir_name(f"sp{vocab_size}"),
                       tokenizer_path=root / "tokenizers" / f"fineweb_{vocab_size}_bpe.model", vocab_size=vocab_size)


# --- build: tokenizer and shards from local text ---------------------------------------------


def iter_documents(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Documents streamed from files as the CaseOps records read them: in a ``.jsonl`` file each
    non-blank line is one (its "text" field, or the line's JSON string), empty texts included, so the
    first N documents are the records' val split; other files are split at blank lines."""
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"--docs {p}: no such file")
        if p.suffix != ".jsonl":
            yield from split_paragraphs(p.read_text(encoding="utf-8", errors="replace"))
            continue
        with open(p, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    text = obj["text"] if isinstance(obj, dict) else obj
                except (ValueError, KeyError):
                    raise ValueError(f"--docs {p}: line {n} is not a JSON object with a \"text\" field") from None
                if not isinstance(text, str):
                    raise ValueError(f"--docs {p}: line {n}: its text is not a string")
                yield text


def read_documents(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Documents from text files: ``.jsonl`` files give one document per line (its "text"
    field); other files are split into documents at blank lines."""
    docs: list[str] = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"--input {p}: no such file")
        if p.suffix == ".jsonl":
            with open(p, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            text = json.loads(line)["text"]
                        except (ValueError, KeyError, TypeError):
                            raise ValueError(f"--input {p}: line {n} is not a JSON object with a \"text\" field") from None
                        if text.strip():
                            docs.append(text)
        else:
            docs.extend(split_paragraphs(p.read_text(encoding="utf-8", errors="replace")))
    return docs


def split_paragraphs(text: str) -> list[str]:
    """Blocks of text separated by blank lines, each stripped; empty blocks dropped."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def train_tokenizer(docs: Sequence[str], vocab_size: int, model_path: str | os.PathLike, threads: int = 2) -> None:
    """Train a SentencePiece BPE model: ids 0 pad, 1 bos (= TrainerConfig.bos_token_id),
    2 eos, 3 unk, then 256 byte-fallback pieces, then merges. No text normalisation,
    so the decoded text is the original text and val_bpb counts its real bytes."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    if vocab_size < 4 + 256 + 1:
        raise ValueError(f"--vocab-size {vocab_size}: must be at least 261 (4 special + 256 byte pieces + 1)")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs), model_prefix=str(model_path.with_suffix("")), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        character_coverage=0.9995, max_sentence_length=1 << 20, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, hard_vocab_limit=True, num_threads=threads, minloglevel=2,
    )


def encode_documents(docs: Sequence[str], model_path: str | os.PathLike, threads: int = 2) -> np.ndarray:
    """All documents encoded into one stream, each prefixed with BOS."""
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    bos = sp.bos_id()
    pieces = sp.encode(list(docs), num_threads=threads)
    out = np.empty(sum(len(p) + 1 for p in pieces), dtype=np.uint16)
    i = 0
    for p in pieces:
        out[i] = bos
        out[i + 1:i + 1 + len(p)] = p
        i += len(p) + 1
    return out


def write_split(tokens: np.ndarray, folder: Path, split: str, shard_tokens: int = SHARD_MAX_TOKENS) -> list[Path]:
    """Write a split as fineweb_{split}_000000.bin, ... of at most ``shard_tokens`` each."""
    if shard_tokens < 1:
        raise ValueError(f"--shard-tokens {shard_tokens}: must be at least 1")
    paths = []
    for n, start in enumerate(range(0, max(tokens.size, 1), shard_tokens)):
        path = folder / f"fineweb_{split}_{n:06d}.bin"
        write_shard(path, tokens[start:start + shard_tokens])
        paths.append(path)
    return paths


def build_corpus(docs: Sequence[str], out_dir: str | os.PathLike, vocab_size: int = 1024,
                 val_fraction: float = 0.1, threads: int = 2, shard_tokens: int = SHARD_MAX_TOKENS) -> CorpusPaths:
    """Tokenizer trained on the train documents, then train and val shards.

    The first ``ceil(val_fraction · docs)`` documents are the val split (as the challenge's
    val split is the first documents of FineWeb); the tokenizer never sees them. Train
    shards hold at most ``shard_tokens`` tokens each (smaller shards give a small corpus
    several files, as the challenge's data has).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction {val_fraction}: must be between 0 and 1")
    if len(docs) < 2:
        raise ValueError(f"need at least 2 documents to make train and val splits, got {len(docs)}")
    n_val = min(len(docs) - 1, max(1, math.ceil(val_fraction * len(docs))))
    val_docs, train_docs = docs[:n_val], docs[n_val:]
    paths = corpus_paths(out_dir, vocab_size)
    for stale in glob.glob(str(paths.data_path / "fineweb_*.bin")):
        os.remove(stale)  # a rebuild must not leave shards of an older build behind
    train_tokenizer(train_docs, vocab_size, paths.tokenizer_path, threads)
    train_files = write_split(encode_documents(train_docs, paths.tokenizer_path, threads), paths.data_path, "train", shard_tokens)
    val_files = write_split(encode_documents(val_docs, paths.tokenizer_path, threads), paths.data_path, "val")
    return CorpusPaths(paths.root, paths.data_path, paths.tokenizer_path, vocab_size, tuple(train_files), tuple(val_files))


def smoke_documents() -> list[str]:
    """English text that ships with every CPython: the pydoc topic help, the license,
    the Zen of Python and the docstrings of pure-Python stdlib modules."""
    import codecs
    from pydoc_data.topics import topics

    docs: list[str] = []
    for name in sorted(topics):
        docs.extend(split_paragraphs(topics[name]))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    license_file = stdlib / "LICENSE.txt"
    if license_file.is_file():
        docs.extend(split_paragraphs(license_file.read_text(encoding="utf-8", errors="replace")))
    for src in sorted(stdlib.glob("*.py")):
        try:
            tree = _parse_python(src.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    docs.append(doc)
            # `import this` would print; its rot13 text is the string assigned to `s`
            if src.name == "this.py" and isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                docs.extend(split_paragraphs(codecs.decode(str(node.value.value), "rot13")))
    return docs


def _parse_python(source: str, attempts: int = 3) -> ast.Module:
    """ast.parse, tried again on CPython 3.11.7's spurious "AST constructor recursion depth
    mismatch" (gh-106905): a garbage-collector finalizer that logs a traceback mid-parse
    parses too (3.11's traceback carets), which trips it; parsing is pure, so a second try
    is the same parse."""
    for attempt in range(attempts):
        try:
            return ast.parse(source)
        except SystemError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def build_smoke_corpus(out_dir: str | os.PathLike, vocab_size: int = 1024) -> CorpusPaths:
    """A small real-text corpus built offline from Python's own documentation (a few seconds)."""
    return build_corpus(smoke_documents(), out_dir, vocab_size, val_fraction=0.1)


# --- caseops: the CaseOps records' data, built with caddie's own transform ---------------------------


T = TypeVar("T")


class _ShardWriter:
    """Values appended in order, written as fineweb_{stem}_NNNNNN.bin shards of ``shard_tokens`` each
    (the last one shorter)."""

    def __init__(self, folder: Path, stem: str, shard_tokens: int):
        self.folder, self.stem, self.shard_tokens = folder, stem, shard_tokens
        self.buf = array.array("H")
        self.paths: list[Path] = []

    def add(self, values: np.ndarray) -> None:
        self.buf.frombytes(values.astype("<u2").tobytes())
        while len(self.buf) >= self.shard_tokens:
            self._write(self.buf[:self.shard_tokens])
            del self.buf[:self.shard_tokens]

    def _write(self, values: array.array) -> None:
        path = self.folder / f"fineweb_{self.stem}_{len(self.paths):06d}.bin"
        write_shard(path, np.frombuffer(values, dtype=np.uint16))
        self.paths.append(path)

    def close(self) -> list[Path]:
        if self.buf:
            self._write(self.buf)
            self.buf = array.array("H")
        return self.paths


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_SP_CACHE: dict[str, spm.SentencePieceProcessor] = {}  # one tokenizer per process (a build's workers load theirs once)


def _caseops_batch(job: tuple[str, int, list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(val tokens, their original byte counts, train tokens) of a batch of documents whose first ``n_val``
    are val: each document is BOS + the tokens of its CaseOps form; a BOS counts 0 bytes."""
    from trainer import caseops  # see build_caseops

    tokenizer, n_val, texts = job
    sp = _SP_CACHE.get(tokenizer) or _SP_CACHE.setdefault(tokenizer, spm.SentencePieceProcessor(model_file=tokenizer))
    bos = sp.bos_id()
    encoded = [caseops.encode(t) for t in texts]
    val_ids: list[int] = []
    val_counts: list[int] = []
    for text, enc in zip(encoded[:n_val], sp.encode(encoded[:n_val], out_type="offset_mapping", num_threads=1) if n_val else []):
        counts = caseops.original_byte_counts(caseops.surfaces(text, enc["offsets"]))
        if counts and max(counts) > 0xFFFF:
            raise ValueError(f"a token stands for {max(counts)} bytes, more than a uint16 sidecar holds")
        val_ids += [bos, *enc["ids"]]
        val_counts += [0, *counts]
    train_ids: list[int] = []
    for ids in sp.encode(encoded[n_val:], out_type=int, num_threads=1) if n_val < len(encoded) else []:
        train_ids += [bos, *ids]
    return np.asarray(val_ids, dtype=np.uint16), np.asarray(val_counts, dtype=np.uint16), np.asarray(train_ids, dtype=np.uint16)


def build_caseops(docs: Iterable[str], tokenizer: str | os.PathLike, out_dir: str | os.PathLike, val_docs: int = CASEOPS_VAL_DOCS,
                  shard_tokens: int = CASEOPS_SHARD_TOKENS, workers: int = 1, log: Callable[[str], None] = print) -> CorpusPaths:
    """CaseOps SP8192 data in the records' layout, from documents and the CaseOps tokenizer:
    ``out_dir/datasets/<CASEOPS_NAME>/fineweb_{train,val,val_bytes}_NNNNNN.bin`` and the tokenizer
    copied to ``out_dir/<CASEOPS_TOKENIZER>``. Each document is transformed (trainer/caseops.py),
    tokenized and written after a BOS; the first ``val_docs`` documents are the val split, and for
    each val token the sidecar holds its original UTF-8 bytes (0 for a BOS and a marker).
    ``workers`` > 1 processes batches of documents in that many processes, a bounded window at a
    time (the documents are streamed, never all in memory), written in document order."""
    if val_docs < 1:
        raise ValueError(f"--val-docs {val_docs}: must be at least 1")
    if shard_tokens < 1:
        raise ValueError(f"--shard-tokens {shard_tokens}: must be at least 1")
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be at least 1")
    # imported here: the bundled train_gpt.py (trainer/bundle.py) drops this tool, and with it the import
    from trainer import caseops

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    unknown = [f"U+{ord(m):04X}" for m in caseops.MARKERS if sp.piece_to_id(m) == sp.unk_id()]
    if unknown:
        raise ValueError(f"--tokenizer {tokenizer}: no piece for the CaseOps marker(s) {', '.join(unknown)}: not a CaseOps tokenizer")
    root = Path(out_dir)
    data, tok = root / "datasets" / CASEOPS_NAME, root / CASEOPS_TOKENIZER
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob("fineweb_*.bin"):
        stale.unlink()  # a rebuild must not leave shards of an older build behind
    tok.parent.mkdir(parents=True, exist_ok=True)
    if not (tok.exists() and tok.samefile(tokenizer)):
        shutil.copyfile(tokenizer, tok)
    train, val, val_bytes = (_ShardWriter(data, stem, shard_tokens) for stem in ("train", "val", "val_bytes"))
    n = 0

    def jobs() -> Iterator[tuple[str, int, list[str]]]:
        seen = 0
        for batch in _batches(docs, 256):
            yield str(tokenizer), max(0, min(len(batch), val_docs - seen)), batch
            seen += len(batch)

    import multiprocessing

    # fork: the workers need nothing but this module's functions, and start at once
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for window in _batches(jobs(), 4 * workers):
            for job, (val_ids, val_counts, train_ids) in zip(window, pool.map(_caseops_batch, window) if pool else map(_caseops_batch, window)):
                val.add(val_ids)
                val_bytes.add(val_counts)
                train.add(train_ids)
                n += len(job[2])
            if n // 100_000 != (n - sum(len(j[2]) for j in window)) // 100_000:
                log(f"caseops: {n} documents")
    finally:
        if pool is not None:
            pool.terminate()
    val_files, train_files = val.close(), train.close()
    val_bytes.close()
    if not val_files or not train_files:
        raise ValueError(f"--val-docs {val_docs}: {n} document(s) give {'no train' if val_files else 'no val'} split")
    log(f"caseops: {n} documents: {len(val_files)} val shard(s) with their byte sidecar, {len(train_files)} train shard(s) in {data}")
    return CorpusPaths(root, data, tok, sp.vocab_size(), tuple(train_files), tuple(val_files))


# --- download: the challenge's shards from Hugging Face -------------------------------------

Fetch = Callable[[str, Path], None]  # (path in the dataset repo, local file) -> the file is there


@dataclass(frozen=True)
class DownloadItem:
    remote: str  # path inside the dataset repo, e.g. datasets/datasets/fineweb10B_sp1024/fineweb_val_000000.bin
    local: Path
    kind: str  # "train" | "val" | "tokenizer"


def local_path_for(remote: str, out_dir: Path, prefix: str = HF_DATA_PREFIX) -> Path:
    """``<prefix>/<rest>`` in the repo -> ``out_dir/<rest>``."""
    parts = Path(remote).parts
    head = Path(prefix).parts if prefix else ()
    if parts[:len(head)] == head:
        parts = parts[len(head):]
    return out_dir.joinpath(*parts)


def plan_download(manifest: dict, variant: str, train_shards: int, out_dir: str | os.PathLike,
                  prefix: str = HF_DATA_PREFIX) -> list[DownloadItem]:
    """Every file a variant needs (val shards, the first N train shards, the tokenizer), from the manifest
    of a repository whose manifest.json is under ``prefix``."""
    out_dir = Path(out_dir)
    name = dataset_dir_name(variant)
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        known = ", ".join(str(d.get("name")) for d in manifest.get("datasets", []))
        raise ValueError(f"--variant {variant}: {name} is not in the manifest (it has: {known or 'nothing'})")
    stats = entry.get("stats") or {}
    have_train, have_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 1))
    if train_shards < 0 or train_shards > have_train:
        raise ValueError(f"--train-shards {train_shards}: must be between 0 and {have_train} (shards of {name})")
    under = f"{prefix}/" if prefix else ""
    items = [DownloadItem(f"{under}datasets/{name}/fineweb_val_{i:06d}.bin", Path(), "val") for i in range(have_val)]
    items += [DownloadItem(f"{under}datasets/{name}/fineweb_train_{i:06d}.bin", Path(), "train") for i in range(train_shards)]
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")), None)
    if tok is None:
        raise ValueError(f"manifest: tokenizer {entry.get('tokenizer_name')!r} of {name} is not listed")
    for key in ("model_path", "vocab_path", "path"):
        if tok.get(key):
            items.append(DownloadItem(f"{under}{tok[key]}", Path(), "tokenizer"))
    return [DownloadItem(i.remote, local_path_for(i.remote, out_dir, prefix), i.kind) for i in items]


def verify_item(item: DownloadItem) -> str | None:
    """None when the local file is complete and sound, else why it must be fetched."""
    if not item.local.is_file():
        return "missing"
    if item.kind in ("train", "val"):
        try:
            read_shard_header(item.local)
        except ShardError as exc:
            return str(exc)
        return None
    if item.local.stat().st_size == 0:
        return "empty file"
    if item.local.suffix == ".model":
        try:
            spm.SentencePieceProcessor(model_file=str(item.local))
        except (RuntimeError, OSError) as exc:
            return f"not a SentencePiece model ({exc})"
    return None


def hf_fetch(remote: str, local: Path, repo: str = HF_DATA_REPO) -> None:
    """Fetch one file of a dataset repo into ``local`` (via the Hugging Face cache)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ImportError("download needs huggingface_hub: pip install 'huggingface_hub>=0.23' (the gpu extra)") from None
    parent, name = os.path.split(remote)
    cached = Path(hf_hub_download(repo, name, subfolder=parent or None, repo_type="dataset")).resolve()
    tmp = local.with_name(local.name + ".part")
    try:
        os.link(cached, tmp)  # no second copy of multi-GB data when the cache is on the same disk
    except OSError:
        shutil.copyfile(cached, tmp)
    os.replace(tmp, local)


def hf_fetcher(source: Source) -> Fetch:
    """The fetch function of one source's repository."""
    return lambda remote, local: hf_fetch(remote, local, source.repo)


SOURCES_FILE = "sources.json"  # in the data root: which source each downloaded dataset came from


def _recorded_sources(out_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((out_dir / SOURCES_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_source(out_dir: Path, dataset: str, source: Source) -> None:
    data = {**_recorded_sources(out_dir), dataset: source.describe()}
    tmp = out_dir / (SOURCES_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / SOURCES_FILE)


def download(variant: str, train_shards: int, out_dir: str | os.PathLike,
             fetch: Fetch | None = None, workers: int = 8, retries: int = 3,
             log: Callable[[str], None] = print, backoff_s: float = 2.0, recipe: Recipe | None = None,
             fetcher: Callable[[Source], Fetch] = hf_fetcher) -> list[DownloadItem]:
    """Fetch what is missing or unsound, then verify everything. Resumable: files already
    present with a sound header and the right size are kept; a fresh manifest is fetched
    each time (one per source, so one source's stale manifest never hides another's
    datasets), but a local one is used when the fetch fails. A dataset first fetched from
    another source is fetched again whole. ``fetch`` wins over ``fetcher(recipe.source)``."""
    recipe = recipe or resolve(variant)
    if recipe.fetch != "dataset":
        raise ValueError(f"--variant {recipe.variant}: its recipe builds its data (prepare_data), it does not download shards")
    source = recipe.source
    fetch = fetch or fetcher(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_file = out_dir / "manifests" / source.key() / "manifest.json"
    manifest_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_with_retries(fetch, source.remote("manifest.json"), manifest_file, retries, log, backoff_s)
    except RuntimeError as exc:
        if not manifest_file.is_file():
            raise
        log(f"using the local {manifest_file}: {exc}")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except ValueError:
        raise ValueError(f"{manifest_file}: not valid JSON") from None
    items = plan_download(manifest, variant if _is_plain(recipe) else recipe.dataset.removeprefix("fineweb10B_"),
                          train_shards, out_dir, source.prefix)
    recorded = _recorded_sources(out_dir).get(recipe.dataset)
    other_source = recorded is not None and recorded != source.describe()
    if other_source:
        log(f"{recipe.dataset} was fetched from {recorded}; fetching it again from {source.describe()}")
    todo = []
    for item in items:
        reason = "from another source" if other_source else verify_item(item)
        if reason is not None:
            if reason != "missing":
                log(f"refetch {item.local}: {reason}")
            todo.append(item)
    log(f"download: {len(items) - len(todo)} of {len(items)} files already complete, fetching {len(todo)} from {source.describe()}")

    def fetch_one(item: DownloadItem) -> None:
        item.local.parent.mkdir(parents=True, exist_ok=True)
        download_with_retries(fetch, item.remote, item.local, retries, log, backoff_s)
        log(f"fetched {item.local}")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fetch_one, todo))
    for item in items:
        reason = verify_item(item)
        if reason is not None:
            raise ShardError(f"{item.local}: still bad after download: {reason}")
    _record_source(out_dir, recipe.dataset, source)
    return items


def _is_plain(recipe: Recipe) -> bool:
    return recipe.dataset == f"fineweb10B_{recipe.variant}"


def download_with_retries(fetch: Callable[[str, Path], None], remote: str, local: Path, retries: int,
                          log: Callable[[str], None], backoff_s: float = 2.0) -> None:
    """One file, tried up to ``retries`` times; the last failure becomes a RuntimeError naming the file."""
    for attempt in range(1, retries + 1):
        try:
            fetch(remote, local)
            return
        except ImportError:
            raise  # no retry fixes a missing package
        except Exception as exc:  # network and hub errors come in many types; all are worth a retry
            if attempt == retries:
                raise RuntimeError(f"fetching {remote} failed after {retries} attempt(s): {exc}") from exc
            log(f"retry {attempt}/{retries - 1} {remote}: {exc}")
            time.sleep(backoff_s * attempt)


# --- build: a recipe's data made by the run's own script, once per node -------------------------


class BuildFailed(RuntimeError):
    """A recipe's build step could not make its data; the message says what failed."""


Wrap = Callable[[Path, Sequence[Path]], list[str]]  # (writable work folder, read-only paths) -> argv prefix


def fetch_docs(source: Source, out_dir: Path, fetch: Fetch, retries: int = 3, log: Callable[[str], None] = print,
               backoff_s: float = 2.0) -> Path:
    """The source's document stream (docs_selected.jsonl), fetched once into ``docs/<source>/``."""
    local = out_dir / "docs" / source.key() / DOCS_FILE
    if local.is_file() and local.stat().st_size > 0:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    download_with_retries(fetch, source.remote(DOCS_FILE), local, retries, log, backoff_s)
    if not local.is_file() or local.stat().st_size == 0:
        raise ShardError(f"{local}: the documents fetched from {source.describe()} are empty")
    return local


def fetch_tokenizer(recipe: Recipe, out_dir: Path, fetch: Fetch, retries: int = 3, log: Callable[[str], None] = print,
                    backoff_s: float = 2.0) -> Path:
    """A recipe's tokenizer from its tokenizer source, fetched once into ``docs/<source>/`` (a file an
    operator puts there is used as it is)."""
    assert recipe.tokenizer_source is not None
    local = out_dir / "docs" / recipe.tokenizer_source.key() / recipe.tokenizer_path
    if local.is_file() and local.stat().st_size > 0:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    download_with_retries(fetch, recipe.tokenizer_source.remote(recipe.tokenizer_path), local, retries, log, backoff_s)
    return local


def build_recipe(recipe: Recipe, files_dir: str | os.PathLike | None, out_dir: str | os.PathLike, fetch: Fetch | None = None,
                 log: Callable[[str], None] = print, python: str = sys.executable, wrap: Wrap | None = None,
                 fetcher: Callable[[Source], Fetch] = hf_fetcher) -> Path:
    """The data folder of a built recipe: ``out_dir/built/<content hash>``, made by the recipe's
    script (a file of the run, in ``files_dir``), or caddie's own builder module, over the source's
    documents. Built once: a folder of the same hash is used as it is; concurrent builds on one node
    wait for each other (a lock file); a build that fails leaves nothing behind but its log. ``wrap``
    seals a run's script; caddie's own builder runs as caddie does."""
    if recipe.build is None:
        raise ValueError(f"data {recipe.variant}: its recipe has no build step")
    out_dir = Path(out_dir)
    files: dict[str, bytes] = {}
    for name in recipe.run_files():
        if files_dir is None:
            raise ValueError(f"--variant {recipe.variant}: its recipe builds from the run's files; give --files DIR")
        try:
            files[name] = (Path(files_dir) / name).read_bytes()
        except FileNotFoundError:
            raise BuildFailed(f"data {recipe.variant}: the run has no {name} (its recipe builds with it)") from None
    digest = content_hash(recipe, files)
    final = out_dir / built_folder(digest)
    if final.is_dir():
        log(f"data {recipe.variant}: built already ({final})")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX only, like the nodes caddie runs on

    with open(final.with_name(final.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run on this node may be building the same recipe
        if final.is_dir():
            log(f"data {recipe.variant}: built by another run meanwhile ({final})")
            return final
        docs = fetch_docs(recipe.source, out_dir, fetch or fetcher(recipe.source), log=log)
        work = final.with_name(final.name + ".tmp")
        shutil.rmtree(work, ignore_errors=True)  # an earlier build that died
        src = work / "recipe-src"
        src.mkdir(parents=True)
        for name, data in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        if recipe.tokenizer_source is not None:
            tokenizer = fetch_tokenizer(recipe, out_dir, fetch or fetcher(recipe.tokenizer_source), log=log)
        else:
            tokenizer = src / recipe.tokenizer_file if recipe.tokenizer_file else work / recipe.tokenizer_path
        args = build_argv(recipe.build, str(docs), str(work), str(tokenizer))
        env = None
        if recipe.build.module:  # caddie's own code: run from caddie's folder, as caddie runs
            argv, cwd = [python, "-m", recipe.build.module, *args], Path(__file__).resolve().parents[1]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(cwd), os.environ.get("PYTHONPATH", "")) if p)}
        else:
            argv, cwd = [python, str(src / recipe.build.script), *args], src
            if wrap is not None:
                argv = [*wrap(work, [docs.parent]), *argv]
        what = recipe.build.describe()
        log(f"data {recipe.variant}: building with {what} (hash {digest[:12]})")
        started = time.monotonic()
        build_log = final.with_name(final.name + ".log")
        with open(build_log, "wb") as out:
            rc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            tail = build_log.read_bytes()[-2000:].decode("utf-8", errors="replace").strip().splitlines()
            shutil.rmtree(work, ignore_errors=True)
            raise BuildFailed(f"data {recipe.variant}: {what} exited with code {rc}"
                              + (f": {tail[-1]}" if tail else "") + f" (its output: {build_log})")
        if recipe.tokenizer_file:
            (work / recipe.tokenizer_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / recipe.tokenizer_file, work / recipe.tokenizer_path)
        problem = _built_problem(work, recipe)
        if problem:
            shutil.rmtree(work, ignore_errors=True)
            raise BuildFailed(f"data {recipe.variant}: {what} finished but {problem} (its output: {build_log})")
        (work / "recipe.json").write_text(json.dumps({
            "variant": recipe.variant, "hash": digest, "source": recipe.source.describe(),
            "build": [recipe.build.script or f"-m {recipe.build.module}", *recipe.build.args],
            "seconds": round(time.monotonic() - started, 1),
        }, indent=1) + "\n", encoding="utf-8")
        os.replace(work, final)  # the folder appears whole or not at all
    log(f"data {recipe.variant}: built in {time.monotonic() - started:.0f} s ({final})")
    return final


def _built_problem(folder: Path, recipe: Recipe) -> str | None:
    """Why a build's output is not usable data, or None: a val shard and a train shard, every shard sound, the tokenizer."""
    data = folder / recipe.data_path
    shards = sorted(data.glob("fineweb_*.bin"))
    if not any(p.name.startswith("fineweb_val_") for p in shards) or not any(p.name.startswith("fineweb_train_") for p in shards):
        return f"{recipe.data_path} holds no fineweb_val_*.bin and fineweb_train_*.bin shards"
    for p in shards:
        try:
            read_shard_header(p)
        except ShardError as exc:
            return str(exc)
    if not (folder / recipe.tokenizer_path).is_file():
        return f"no tokenizer at {recipe.tokenizer_path}"
    return None


def prepare_data(recipe: Recipe, train_shards: int, out_dir: str | os.PathLike, files_dir: str | os.PathLike | None = None,
                 fetch: Fetch | None = None, log: Callable[[str], None] = print, wrap: Wrap | None = None,
                 fetcher: Callable[[Source], Fetch] = hf_fetcher) -> Path:
    """A recipe's data on this node: downloaded into ``out_dir`` or built under it; returns its data folder
    (what a run links as ./data)."""
    if recipe.build is None:
        download(recipe.variant, train_shards, out_dir, fetch=fetch, log=log, recipe=recipe, fetcher=fetcher)
        return Path(out_dir)
    return build_recipe(recipe, files_dir, out_dir, fetch=fetch, log=log, wrap=wrap, fetcher=fetcher)


# --- command line -------------------------------------------------------------------------------


def data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.data", description="Token shards and tokenizers for the trainer.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="a data variant's recipe: its shards and tokenizer downloaded, or built by the run's script")
    d.add_argument("--variant", default="sp1024", help=f"a recipe: {', '.join(BUILTIN)} or sp<VOCAB> (default sp1024)")
    d.add_argument("--train-shards", type=int, default=80, help="train shards to fetch (100M tokens each; default 80)")
    d.add_argument("--out", default="./data", help="data root (default ./data)")
    d.add_argument("--files", default=None, help="the run's own files (a recipe with a build step runs its script from here)")
    d.add_argument("--sources", default=os.environ.get("CADDIE_DATA_SOURCES", ""),
                   help="source overrides, variant=owner/name[/prefix],... or JSON (default: $CADDIE_DATA_SOURCES)")
    d.add_argument("--sandbox", default="", help="command prefix a build step runs under; given --workdir DIR, --ro PATH..., --")
    d.add_argument("--trainer", action="store_true",
                   help="the shared trainer's recipe of the variant (sp8192_caseops: built by caddie's own transform, no run files)")
    b = sub.add_parser("build", help="train a tokenizer on local text and write train/val shards")
    b.add_argument("--input", nargs="+", required=True, help="text files (blank-line separated documents) or .jsonl with a text field")
    b.add_argument("--vocab-size", type=int, default=1024)
    b.add_argument("--out", default="./data")
    b.add_argument("--val-fraction", type=float, default=0.1, help="share of documents in the val split (the first ones)")
    b.add_argument("--shard-tokens", type=int, default=SHARD_MAX_TOKENS, help="tokens per train shard (default 100,000,000)")
    c = sub.add_parser("caseops", help="CaseOps SP8192 data (the 2026-04-27 record's) from documents and the CaseOps tokenizer, "
                       "with caddie's own transform: shards and the val byte sidecar in the record's layout")
    c.add_argument("--docs", nargs="+", required=True, help="docs_selected.jsonl (one {\"text\": ...} a line) or text files")
    c.add_argument("--tokenizer", "--sp", required=True, help="fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
    c.add_argument("--out", default="./data", help="data folder: DATA_PATH is OUT/datasets/" + CASEOPS_NAME)
    c.add_argument("--val-docs", type=int, default=CASEOPS_VAL_DOCS, help="the first N documents are the val split (default 10,000)")
    c.add_argument("--shard-tokens", type=int, default=CASEOPS_SHARD_TOKENS, help="tokens per shard (default 10,000,000)")
    c.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 32), help="processes (default: one per CPU, at most 32)")
    c.add_argument("--build-version", default=CASEOPS_BUILD_VERSION,
                   help="the builder version a recipe was hashed with; another than this code's is refused")
    s = sub.add_parser("smoke", help="a small offline corpus from Python's own documentation")
    s.add_argument("--out", default="./data")
    s.add_argument("--vocab-size", type=int, default=1024)
    return parser


def sandbox_wrap(prefix: str) -> Wrap | None:
    """A Wrap from a command prefix such as ``python3 -m worker.launchers.sandbox --die-with-parent``."""
    import shlex

    head = shlex.split(prefix)
    if not head:
        return None
    return lambda work, ro: [*head, "--workdir", str(work), *(a for p in ro for a in ("--ro", str(p))), "--"]


def data_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m trainer.data``; bad input gives one error line and exit 2."""
    args = data_parser().parse_args(argv)
    try:
        if args.command == "download":
            recipe = resolve(args.variant, parse_sources(args.sources), trainer=args.trainer)
            folder = prepare_data(recipe, args.train_shards, args.out, args.files, wrap=sandbox_wrap(args.sandbox))
            vocab = re.match(r"^sp(\d+)", recipe.variant)
            print(f"DATA_FOLDER={Path(folder).resolve()}")
            paths = CorpusPaths(Path(folder), Path(folder) / recipe.data_path, Path(folder) / recipe.tokenizer_path,
                                int(vocab[1]) if vocab else 0)
        elif args.command == "caseops":
            if args.build_version != CASEOPS_BUILD_VERSION:
                raise ValueError(f"--build-version {args.build_version}: this caddie builds CaseOps data version {CASEOPS_BUILD_VERSION}")
            paths = build_caseops(iter_documents(args.docs), args.tokenizer, args.out, args.val_docs, args.shard_tokens, args.workers)
        elif args.command == "build":
            paths = build_corpus(read_documents(args.input), args.out, args.vocab_size, args.val_fraction,
                                 shard_tokens=args.shard_tokens)
        else:
            paths = build_smoke_corpus(args.out, args.vocab_size)
    except (ShardError, ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"DATA_PATH={paths.data_path}\nTOKENIZER_PATH={paths.tokenizer_path}\nVOCAB_SIZE={paths.vocab_size}")
    return 0


if __name__ == "__main__":
    sys.exit(data_main())
