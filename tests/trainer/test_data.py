"""Shards, the training stream, val tokens, corpus building and the download plan."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from trainer.data import (
    SHARD_HEADER_BYTES,
    ShardError,
    TokenStream,
    download,
    load_val_tokens,
    plan_download,
    read_shard,
    read_shard_header,
    smoke_documents,
    write_shard,
)

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.data", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


# --- shard format --------------------------------------------------------------------------


def test_shard_roundtrip_keeps_every_token_and_the_exact_size(tmp_path):
    tokens = np.array([0, 1, 2, 65535, 1023, 7], dtype=np.int64)
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, tokens)
    assert path.stat().st_size == SHARD_HEADER_BYTES + 2 * len(tokens)
    header = np.fromfile(path, dtype="<i4", count=3)
    assert header.tolist() == [20240520, 1, len(tokens)]
    back = read_shard(path)
    assert back.dtype == np.uint16 and back.tolist() == tokens.tolist()
    write_shard(path, torch.tensor([5, 6]))  # tensors too; rewrites atomically
    assert read_shard(path).tolist() == [5, 6]
    write_shard(path, [])
    assert read_shard(path).size == 0


def test_write_shard_refuses_ids_that_do_not_fit_uint16(tmp_path):
    with pytest.raises(ValueError, match="65535"):
        write_shard(tmp_path / "x.bin", [1, 70000])
    with pytest.raises(ValueError, match="65535"):
        write_shard(tmp_path / "x.bin", [-1])
    assert not (tmp_path / "x.bin").exists()


def _corrupt(path: Path, kind: str) -> None:
    write_shard(path, np.arange(100))
    raw = bytearray(path.read_bytes())
    if kind == "magic":
        raw[0:4] = np.array([12345], "<i4").tobytes()
    elif kind == "version":
        raw[4:8] = np.array([2], "<i4").tobytes()
    elif kind == "truncated":
        raw = raw[:-3]
    elif kind == "trailing":
        raw += b"\x00\x01"
    elif kind == "tiny":
        raw = raw[:500]
    elif kind == "negative":
        raw[8:12] = np.array([-5], "<i4").tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind, message", [
    ("magic", "bad magic 12345"),
    ("version", "unsupported version 2"),
    ("truncated", "truncated"),
    ("trailing", "2 trailing bytes"),
    ("tiny", "too small for the 1024-byte header"),
    ("negative", "negative token count"),
])
def test_corrupt_shards_name_the_file_and_the_problem(tmp_path, kind, message):
    path = tmp_path / f"fineweb_val_{kind}.bin"
    _corrupt(path, kind)
    for reader in (read_shard, read_shard_header):
        with pytest.raises(ShardError, match=message) as err:
            reader(path)
        assert str(path) in str(err.value)


def test_missing_shards_are_a_shard_error(tmp_path):
    with pytest.raises(ShardError, match="no such shard file"):
        read_shard(tmp_path / "nope.bin")
    with pytest.raises(ShardError, match="no shard files match"):
        TokenStream(str(tmp_path / "fineweb_train_*.bin"))
    with pytest.raises(ShardError, match="no shard files match"):
        load_val_tokens(str(tmp_path / "fineweb_val_*.bin"))


# --- stream and val tokens -------------------------------------------------------------------


def _shards(tmp_path: Path, sizes: list[int], split: str = "train") -> np.ndarray:
    """Shards holding 0, 1, 2, ... in order; returns the whole stream."""
    stream = np.arange(sum(sizes)) % 60000
    start = 0
    for n, size in enumerate(sizes):
        write_shard(tmp_path / f"fineweb_{split}_{n:06d}.bin", stream[start:start + size])
        start += size
    return stream


def test_stream_reads_shards_in_order_and_wraps_around(tmp_path):
    stream = _shards(tmp_path, [50, 30, 45])
    ts = TokenStream(str(tmp_path / "fineweb_train_*.bin"))
    got = np.concatenate([ts.take(40) for _ in range(10)])  # 400 tokens: three full passes and more
    expected = np.concatenate([stream] * 4)[:400]
    assert got.tolist() == expected.tolist()


def test_each_rank_takes_its_contiguous_span_plus_one(tmp_path):
    stream = _shards(tmp_path, [100, 100, 100])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    seq, global_tokens = 8, 32  # 2 ranks x 2 sequences of 8
    ranks = [TokenStream(pattern, r, 2) for r in range(2)]
    for step in range(5):
        base = step * 2 * (16 + 1)
        for r, ts in enumerate(ranks):
            x, y = ts.next_batch(global_tokens, seq, "cpu")
            assert x.shape == y.shape == (2, seq) and x.dtype == y.dtype == torch.int64
            span = stream[base + r * 17: base + r * 17 + 17]
            assert x.flatten().tolist() == span[:-1].tolist()
            assert y.flatten().tolist() == span[1:].tolist()


def test_one_rank_with_micro_batches_sees_what_two_ranks_see(tmp_path):
    _shards(tmp_path, [70, 90])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    single, pair = TokenStream(pattern, 0, 1), [TokenStream(pattern, r, 2) for r in range(2)]
    for _ in range(6):
        one = [single.next_batch(16, 8, "cpu") for _ in range(2)]
        two = [ts.next_batch(32, 8, "cpu") for ts in pair]
        for (x1, y1), (x2, y2) in zip(one, two):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_batch_that_does_not_split_into_sequences_is_refused(tmp_path):
    _shards(tmp_path, [100])
    ts = TokenStream(str(tmp_path / "fineweb_train_*.bin"), 0, 2)
    with pytest.raises(ValueError, match="does not split"):
        ts.next_batch(30, 8, "cpu")


def test_val_tokens_concatenate_shards_and_honour_the_limit(tmp_path):
    stream = _shards(tmp_path, [40, 25], split="val")
    pattern = str(tmp_path / "fineweb_val_*.bin")
    full = load_val_tokens(pattern)
    assert full.dtype == torch.int64 and full.tolist() == stream.tolist()
    assert load_val_tokens(pattern, 50).tolist() == stream[:50].tolist()
    assert load_val_tokens(pattern, 10_000).numel() == 65


# --- building corpora ------------------------------------------------------------------------------


def test_smoke_corpus_is_real_text_with_bos_before_every_document(smoke_corpus):
    sp = spm.SentencePieceProcessor(model_file=str(smoke_corpus.tokenizer_path))
    assert sp.vocab_size() == 1024 and sp.bos_id() == 1 and sp.is_byte(4)
    train = read_shard(smoke_corpus.data_path / "fineweb_train_000000.bin")
    val = read_shard(smoke_corpus.data_path / "fineweb_val_000000.bin")
    assert train.size > 200_000 and val.size > 10_000
    assert train[0] == val[0] == 1 and (train == 1).sum() > 100
    first_doc = val[1: 1 + np.argmax(val[1:] == 1)].tolist()  # val = the first documents, each after a BOS
    assert sp.decode(first_doc) == smoke_documents()[0]


def test_build_cli_writes_the_trainer_layout(tmp_path):
    docs = tmp_path / "docs.jsonl"
    from pydoc_data.topics import topics
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in topics.values()), encoding="utf-8")
    out = tmp_path / "data"
    r = run_cli("build", "--input", str(docs), "--vocab-size", "400", "--out", str(out), "--val-fraction", "0.2")
    assert r.returncode == 0, r.stderr
    assert f"DATA_PATH={out}/datasets/fineweb10B_sp400" in r.stdout
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizers" / "fineweb_400_bpe.model"))
    assert sp.vocab_size() == 400
    val = read_shard(out / "datasets" / "fineweb10B_sp400" / "fineweb_val_000000.bin")
    first_val_doc = list(topics.values())[0]  # val = the first documents
    ends = np.flatnonzero(val == 1).tolist()[1:] + [val.size]
    assert sp.decode(val[1:ends[0]].tolist()) == first_val_doc
    assert (val == 1).sum() == round(0.2 * len(topics) + 0.4999)  # one BOS per val document


def test_build_cli_bad_input_is_one_error_line(tmp_path):
    r = run_cli("build", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "missing.txt" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "t.txt").write_text("only one document\n")
    r = run_cli("build", "--input", str(tmp_path / "t.txt"), "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "at least 2 documents" in r.stderr


# --- download: the plan and the resume logic, against a local stand-in for the repo ------------


def _fake_repo(root: Path, train_shards: int = 3) -> Path:
    """A folder shaped like the Hugging Face dataset repo (datasets/...) with a manifest."""
    data = root / "datasets" / "datasets" / "fineweb10B_sp1024"
    for n in range(train_shards):
        write_shard(data / f"fineweb_train_{n:06d}.bin", np.full(64, n))
    write_shard(data / "fineweb_val_000000.bin", np.arange(32))
    tok = root / "datasets" / "tokenizers"
    tok.mkdir(parents=True)
    (tok / "fineweb_1024_bpe.vocab").write_text("<pad>\t0\n")
    manifest = {
        "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                      "stats": {"files_train": train_shards, "files_val": 1}}],
        "tokenizers": [{"name": "sp_bpe_1024", "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
    }
    (root / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    return root


class RepoFetcher:
    """Copies files out of a local repo folder and records what was asked for."""

    def __init__(self, root: Path):
        self.root, self.fetched = root, []

    def __call__(self, remote: str, local: Path) -> None:
        self.fetched.append(remote)
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / remote, local)


def test_download_plan_maps_the_repo_layout_onto_the_trainer_layout(tmp_path):
    repo = _fake_repo(tmp_path / "repo")
    manifest = json.loads((repo / "datasets" / "manifest.json").read_text())
    plan = plan_download(manifest, "sp1024", 2, tmp_path / "data")
    assert [(i.kind, i.remote) for i in plan] == [
        ("val", "datasets/datasets/fineweb10B_sp1024/fineweb_val_000000.bin"),
        ("train", "datasets/datasets/fineweb10B_sp1024/fineweb_train_000000.bin"),
        ("train", "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin"),
        ("tokenizer", "datasets/tokenizers/fineweb_1024_bpe.vocab"),
    ]
    assert plan[1].local == tmp_path / "data" / "datasets" / "fineweb10B_sp1024" / "fineweb_train_000000.bin"
    assert plan[3].local == tmp_path / "data" / "tokenizers" / "fineweb_1024_bpe.vocab"
    with pytest.raises(ValueError, match="--train-shards 4: must be between 0 and 3"):
        plan_download(manifest, "sp1024", 4, tmp_path)
    with pytest.raises(ValueError, match="fineweb10B_sp4096 is not in the manifest"):
        plan_download(manifest, "sp4096", 1, tmp_path)
    with pytest.raises(ValueError, match="expected sp<VOCAB_SIZE>"):
        plan_download(manifest, "gpt2", 1, tmp_path)


def test_download_resumes_keeps_sound_files_and_refetches_corrupt_ones(tmp_path):
    repo = _fake_repo(tmp_path / "repo")
    out = tmp_path / "data"
    first = RepoFetcher(repo)
    items = download("sp1024", 2, out, fetch=first, log=lambda m: None)
    assert len(first.fetched) == 1 + 4  # the manifest, then every file
    assert read_shard(out / "datasets" / "fineweb10B_sp1024" / "fineweb_train_000001.bin").tolist() == [1] * 64

    # a second call fetches only the manifest; more shards fetch only the new one
    again = RepoFetcher(repo)
    download("sp1024", 3, out, fetch=again, log=lambda m: None)
    assert again.fetched == ["datasets/manifest.json", "datasets/datasets/fineweb10B_sp1024/fineweb_train_000002.bin"]

    # a truncated shard (an interrupted copy) is fetched again, and so is a deleted one
    shard = items[1].local
    shard.write_bytes(shard.read_bytes()[:-10])
    items[0].local.unlink()
    logs: list[str] = []
    third = RepoFetcher(repo)
    download("sp1024", 3, out, fetch=third, log=logs.append)
    assert sorted(third.fetched[1:]) == sorted([items[0].remote, items[1].remote])
    assert any("refetch" in m and "truncated" in m for m in logs)
    assert read_shard(shard).size == 64


def test_download_fails_loudly_when_the_fetched_file_is_corrupt(tmp_path):
    repo = _fake_repo(tmp_path / "repo")
    bad = repo / "datasets" / "datasets" / "fineweb10B_sp1024" / "fineweb_train_000000.bin"
    bad.write_bytes(bad.read_bytes() + b"junk")
    with pytest.raises(ShardError, match="still bad after download.*trailing bytes"):
        download("sp1024", 1, tmp_path / "data", fetch=RepoFetcher(repo), log=lambda m: None)


def test_download_retries_transient_failures_and_works_offline_from_a_local_manifest(tmp_path):
    repo = _fake_repo(tmp_path / "repo")
    out = tmp_path / "data"
    calls: dict[str, int] = {}
    copy = RepoFetcher(repo)

    def flaky(remote: str, local: Path) -> None:
        calls[remote] = calls.get(remote, 0) + 1
        if calls[remote] == 1:
            raise ConnectionError("connection reset")
        copy(remote, local)

    logs: list[str] = []
    download("sp1024", 1, out, fetch=flaky, log=logs.append, backoff_s=0)
    assert set(calls.values()) == {2} and sum("retry 1/2" in m for m in logs) == len(calls)

    def offline(remote: str, local: Path) -> None:
        raise ConnectionError("network unreachable")

    download("sp1024", 1, out, fetch=offline, log=logs.append, backoff_s=0)  # everything is there already
    assert any("using the local" in m for m in logs)
    with pytest.raises(RuntimeError, match="fineweb_train_000001.bin failed after 3 attempt"):
        download("sp1024", 2, out, fetch=offline, log=logs.append, backoff_s=0)


def test_download_refetches_a_tokenizer_model_that_does_not_load(tmp_path, smoke_corpus):
    repo = _fake_repo(tmp_path / "repo")
    shutil.copyfile(smoke_corpus.tokenizer_path, repo / "datasets" / "tokenizers" / "fineweb_1024_bpe.model")
    manifest = json.loads((repo / "datasets" / "manifest.json").read_text())
    manifest["tokenizers"][0]["model_path"] = "tokenizers/fineweb_1024_bpe.model"
    (repo / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "data"
    download("sp1024", 1, out, fetch=RepoFetcher(repo), log=lambda m: None)
    model = out / "tokenizers" / "fineweb_1024_bpe.model"
    model.write_bytes(model.read_bytes()[:100])  # an interrupted copy
    logs: list[str] = []
    again = RepoFetcher(repo)
    download("sp1024", 1, out, fetch=again, log=logs.append)
    assert again.fetched[1:] == ["datasets/tokenizers/fineweb_1024_bpe.model"]
    assert any("not a SentencePiece model" in m for m in logs)
    assert spm.SentencePieceProcessor(model_file=str(model)).vocab_size() == 1024


@pytest.mark.skipif(importlib.util.find_spec("huggingface_hub") is not None, reason="huggingface_hub is installed")
def test_download_without_huggingface_hub_says_what_to_install(tmp_path):
    r = run_cli("download", "--train-shards", "1", "--out", str(tmp_path))
    assert r.returncode == 2 and "huggingface_hub" in r.stderr and "Traceback" not in r.stderr
