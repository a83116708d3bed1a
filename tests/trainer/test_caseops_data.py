"""CaseOps data for the shared trainer (issue 22 item 3): `python -m trainer.data caseops` writes the
2026-04-27 record's layout (train/val shards and the val byte sidecar) with caddie's own transform,
CASEOPS_ENABLED scores every evaluation (full, sliding, whole-model and phased LoRA TTT) on the
sidecar's original bytes, and a tiny CPU run on such data reports the bpb computed by hand from the
documents' own UTF-8 bytes.

The record's tokenizer and lossless_caps.py are read from ../shared/challenge at test time.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import sentencepiece as spm
import torch
from test_caseops import TOKENIZER, proto_pieces, record  # noqa: F401 (fixture)
from test_evaluate import Context
from test_train import TINY

from trainer.bpb import ByteLUTs, token_bytes
from trainer.config import ConfigError, TrainerConfig
from trainer.data import (
    ShardError,
    build_caseops,
    data_main,
    load_val_bytes,
    load_val_tokens,
    read_shard,
    shard_files,
    smoke_documents,
    write_shard,
)
from trainer.evaluate import evaluate_full, evaluate_sliding, evaluate_ttt
from trainer.recipes import CASEOPS_NAME, CASEOPS_TOKENIZER
from trainer.train import ARTIFACT_NAME, RunError, evaluate_only, train

VAL_DOCS = 24


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """Smoke documents with capitals of every kind, the first VAL_DOCS of them the val split; stripped, as
    the tokenizer's normalizer drops whitespace at a document's ends (so no token counts those bytes)."""
    if not TOKENIZER.is_file():
        pytest.skip(f"record tokenizer not found at {TOKENIZER}")
    docs = [d.strip() for d in smoke_documents() if re.search(r"[A-Z]{2}", d) and re.search(r"[a-z][A-Z]", d)]
    return docs[:VAL_DOCS] + docs[VAL_DOCS:VAL_DOCS + 400]


@pytest.fixture(scope="module")
def caseops_corpus(documents, tmp_path_factory):
    """Built through the command line, from a .jsonl of the documents, in shards of 2,000 tokens, by 2 processes."""
    folder = tmp_path_factory.mktemp("caseops")
    docs_file = folder / "docs_selected.jsonl"
    docs_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
    assert data_main(["caseops", "--docs", str(docs_file), "--tokenizer", str(TOKENIZER), "--out", str(folder / "data"),
                      "--val-docs", str(VAL_DOCS), "--shard-tokens", "2000", "--workers", "2"]) == 0
    return folder / "data"


def test_the_build_writes_the_records_layout(caseops_corpus):
    data = caseops_corpus / "datasets" / CASEOPS_NAME
    names = sorted(p.name for p in data.iterdir())
    val = [n for n in names if re.fullmatch(r"fineweb_val_\d{6}\.bin", n)]
    sidecar = [n for n in names if re.fullmatch(r"fineweb_val_bytes_\d{6}\.bin", n)]
    assert len(val) >= 2 and [n.replace("val_bytes_", "val_") for n in sidecar] == val  # one sidecar shard per val shard
    assert len([n for n in names if n.startswith("fineweb_train_")]) >= 2
    for v, s in zip(val, sidecar):
        assert read_shard(data / v).size == read_shard(data / s).size
    assert (caseops_corpus / CASEOPS_TOKENIZER).read_bytes() == TOKENIZER.read_bytes()
    assert shard_files(str(data / "fineweb_val_*.bin")) == [str(data / n) for n in val]  # the sidecar is not tokens


def test_tokens_and_byte_counts_are_the_records_pipeline(caseops_corpus, documents, record):
    """Each val document is BOS + the record's tokens of its transform; its sidecar 0 + the record's counts."""
    data = caseops_corpus / "datasets" / CASEOPS_NAME
    tokens = load_val_tokens(str(data / "fineweb_val_*.bin")).numpy()
    counts = load_val_bytes(data, tokens.size).numpy()
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    i = 0
    for doc in documents[:VAL_DOCS]:
        pieces = proto_pieces(sp, record.encode_lossless_caps_v2(doc))
        theirs = record.surface_piece_original_byte_counts([s for _, s in pieces], text_transform_name="lossless_caps_caseops_v1")
        n = len(pieces) + 1
        assert tokens[i:i + n].tolist() == [sp.bos_id(), *(t for t, _ in pieces)]
        assert counts[i:i + n].tolist() == [0, *theirs]
        assert counts[i:i + n].sum() == len(doc.encode("utf-8"))
        i += n
    assert i == tokens.size
    train = np.concatenate([read_shard(p) for p in shard_files(str(data / "fineweb_train_*.bin"))])
    assert (train == sp.bos_id()).sum() == len(documents) - VAL_DOCS


def test_one_process_writes_the_same_bytes_as_two(caseops_corpus, documents, tmp_path):
    build_caseops(documents, TOKENIZER, tmp_path, val_docs=VAL_DOCS, shard_tokens=2000, workers=1, log=lambda m: None)
    ours, theirs = tmp_path / "datasets" / CASEOPS_NAME, caseops_corpus / "datasets" / CASEOPS_NAME
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names
    assert all((ours / n).read_bytes() == (theirs / n).read_bytes() for n in names)


def test_a_sidecar_of_another_length_is_refused(caseops_corpus, tmp_path):
    data = caseops_corpus / "datasets" / CASEOPS_NAME
    total = load_val_tokens(str(data / "fineweb_val_*.bin")).numel()
    assert load_val_bytes(data, total, limit=100).numel() == 100
    with pytest.raises(ShardError, match="byte counts for"):
        load_val_bytes(data, total + 1)
    with pytest.raises(ShardError, match="no byte sidecar"):
        load_val_bytes(tmp_path, total)


def test_the_build_refuses_a_tokenizer_without_the_markers(smoke_corpus, tmp_path):
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"text": "A"}\n{"text": "B"}\n')
    with pytest.raises(ValueError, match="not a CaseOps tokenizer"):
        build_caseops(["A", "B"], smoke_corpus.tokenizer_path, tmp_path / "out", val_docs=1)
    assert data_main(["caseops", "--docs", str(docs), "--tokenizer", str(TOKENIZER), "--out", str(tmp_path / "o"), "--val-docs", "5"]) == 2


# --- the knob ------------------------------------------------------------------------------------


def test_the_knob_needs_the_caseops_vocabulary_and_picks_the_data_variant():
    with pytest.raises(ConfigError, match="CASEOPS_ENABLED"):
        TrainerConfig.from_dict({"STACK": "2026-03-23", "CASEOPS_ENABLED": 1})
    cfg = TrainerConfig.from_dict({"CASEOPS_ENABLED": True})  # the default stack is SP8192
    assert cfg.data_variant == "sp8192_caseops" and TrainerConfig.from_dict({}).data_variant == "sp8192"
    assert TrainerConfig.from_dict({"STACK": "2026-03-23"}).data_variant == "sp1024"
    assert TrainerConfig.json_schema()["properties"]["CASEOPS_ENABLED"]["type"] == "boolean"


# --- every evaluation counts the sidecar at each target's position ---------------------------------


def test_every_evaluation_counts_the_sidecar_at_each_targets_position(smoke_corpus):
    """A sidecar holding what the tables give at each position scores exactly as the tables do (any
    misalignment would count a neighbour's bytes); a drawn sidecar sums to what each path reports."""
    val = load_val_tokens(str(smoke_corpus.data_path / "fineweb_val_*.bin"), 1500)
    luts = ByteLUTs.from_sentencepiece(str(smoke_corpus.tokenizer_path), 1024)
    # position 0 is no target: 100 bytes there would show in any sum off by one position
    same = torch.cat([torch.tensor([100], dtype=torch.int32), token_bytes(val[:-1], val[1:], luts)])
    drawn = torch.randint(0, 9, (val.numel(),), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    drawn[0] = 100
    cfg = TrainerConfig.from_dict({"STACK": "2026-03-23", "EVAL_SEQ_LEN": 64, "EVAL_STRIDE": 16, "EVAL_BATCH_SEQS": 5,
                                   "TTT_CHUNK_TOKENS": 256, "TTT_BATCH_SEQS": 2, "TTT_EPOCHS": 1})
    runs = {
        "full": lambda m, b: evaluate_full(m, val, b, 64, 5),
        "sliding": lambda m, b: evaluate_sliding(m, val, b, 64, 16, 5),
        "ttt": lambda m, b: evaluate_ttt(m, val, b, cfg),
    }
    for name, run in runs.items():
        a, b = run(Context(1024, seed=2), luts), run(Context(1024, seed=2), ByteLUTs.from_sidecar(same))
        assert (b.bytes, b.val_loss, b.val_bpb) == (a.bytes, a.val_loss, a.val_bpb), name
        assert run(Context(1024, seed=2), ByteLUTs.from_sidecar(drawn)).bytes == int(drawn[1:].sum()), name
    with pytest.raises(ValueError, match="position"):
        token_bytes(val[:-1], val[1:], ByteLUTs.from_sidecar(same))


# --- a whole run on CaseOps data --------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_run_on_caseops_data_reports_the_bpb_of_the_original_bytes(caseops_corpus, documents, tmp_path):
    data = caseops_corpus / "datasets" / CASEOPS_NAME
    out = tmp_path / "out"
    cfg = TrainerConfig.from_dict({**TINY, "VOCAB_SIZE": 8192, "CASEOPS_ENABLED": 1, "DATA_PATH": str(data),
                                   "TOKENIZER_PATH": str(caseops_corpus / CASEOPS_TOKENIZER), "OUTPUT_DIR": str(out),
                                   "VAL_TOKENS_LIMIT": 0, "ITERATIONS": 3, "BIGRAM_VOCAB_SIZE": 0, "TTT_CHUNK_TOKENS": 2048,
                                   "ARTIFACT_SETTINGS": 1})
    result = train(cfg)
    val = load_val_tokens(str(data / "fineweb_val_*.bin"))
    original = sum(len(d.encode("utf-8")) for d in documents[:VAL_DOCS])  # by hand: the val documents' own bytes
    assert result["val_tokens_scored"] == val.numel() - 1  # every target: all tokens after the first BOS
    by_hand = result["val_loss"] / math.log(2) * result["val_tokens_scored"] / original
    assert result["val_bpb"] == pytest.approx(by_hand, rel=1e-12)
    log = (out / "train.log").read_text()
    loss, bpb = map(float, re.search(r"final_int6_sliding_window_exact val_loss:(\S+) val_bpb:(\S+)", log).groups())
    assert bpb == pytest.approx(loss / math.log(2) * (val.numel() - 1) / original, rel=1e-7)  # before TTT, to the log's 8 digits
    # the tokenizer's own tables would count the transformed, normalised pieces: another, wrong number
    luts = ByteLUTs.from_sentencepiece(str(caseops_corpus / CASEOPS_TOKENIZER), 8192)
    assert int(token_bytes(val[:-1], val[1:], luts).sum()) != original
    assert result["val_shards"] == sorted(p.name for p in data.glob("fineweb_val_0*.bin"))
    # the artifact carries CASEOPS_ENABLED: evaluated alone it scores the same bytes; told otherwise, it refuses
    alone = {"EVAL_ARTIFACT": str(out / ARTIFACT_NAME), "DATA_PATH": str(data), "OUTPUT_DIR": str(out),
             "TOKENIZER_PATH": str(caseops_corpus / CASEOPS_TOKENIZER)}
    assert evaluate_only({**alone, "TTT_ENABLED": 0})["val_bpb"] == result["pre_ttt_bpb"]
    with pytest.raises(ConfigError, match="CASEOPS_ENABLED"):
        evaluate_only({**alone, "CASEOPS_ENABLED": 0})


def test_a_run_without_the_sidecar_fails_naming_the_data_path(caseops_corpus, tmp_path):
    data = tmp_path / "nosidecar"
    data.mkdir()
    src = caseops_corpus / "datasets" / CASEOPS_NAME
    for p in src.glob("fineweb_*.bin"):
        if "_bytes_" not in p.name:
            write_shard(data / p.name, read_shard(p))
    cfg = TrainerConfig.from_dict({**TINY, "VOCAB_SIZE": 8192, "CASEOPS_ENABLED": 1, "DATA_PATH": str(data), "BIGRAM_VOCAB_SIZE": 0,
                                   "TOKENIZER_PATH": str(caseops_corpus / CASEOPS_TOKENIZER), "OUTPUT_DIR": str(tmp_path / "out")})
    with pytest.raises(RunError, match=r"DATA_PATH=.*no byte sidecar"):
        train(cfg)


# --- the shared trainer's recipe: caddie's own builder, the tokenizer from the records' repository ------------


def test_the_trainers_recipe_builds_with_caddies_transform_once(tmp_path):
    from test_recipes import Repos

    from trainer.data import build_recipe
    from trainer.recipes import CASEOPS_TOKENIZER_SOURCE, CHALLENGE_REPO, resolve

    if not TOKENIZER.is_file():
        pytest.skip(f"record tokenizer not found at {TOKENIZER}")
    script_recipe, recipe = resolve("sp8192_caseops"), resolve("sp8192_caseops", trainer=True)
    assert script_recipe.run_files() and not recipe.run_files() and recipe.build.module == "trainer.data"
    repos = Repos(tmp_path / "repos")
    docs = tmp_path / "repos" / CHALLENGE_REPO / "datasets" / "docs_selected.jsonl"
    docs.parent.mkdir(parents=True)
    texts = [f"Document {n}: the NASA McDonald iPhone \ue001 case." for n in range(10_030)]  # the records' 10,000 val documents + 30
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    tok = tmp_path / "repos" / CASEOPS_TOKENIZER_SOURCE.repo / "datasets" / CASEOPS_TOKENIZER
    tok.parent.mkdir(parents=True)
    tok.write_bytes(TOKENIZER.read_bytes())
    logs: list[str] = []
    folder = build_recipe(recipe, None, tmp_path / "root", fetcher=repos, log=logs.append)
    assert set(repos.asked) == {(CHALLENGE_REPO, "datasets/docs_selected.jsonl"),
                                (CASEOPS_TOKENIZER_SOURCE.repo, f"datasets/{CASEOPS_TOKENIZER}")}
    data = folder / recipe.data_path
    val = load_val_tokens(str(data / "fineweb_val_*.bin"))
    counts = load_val_bytes(data, val.numel())
    assert int(counts.sum()) == sum(len(t.encode("utf-8")) for t in texts[:10_000])
    train_tokens = np.concatenate([read_shard(p) for p in shard_files(str(data / "fineweb_train_*.bin"))])
    assert (train_tokens == 1).sum() == 30 and (folder / CASEOPS_TOKENIZER).is_file()
    assert json.loads((folder / "recipe.json").read_text())["build"][0] == "-m trainer.data"
    assert build_recipe(recipe, None, tmp_path / "root", fetcher=repos, log=logs.append) == folder and "built already" in logs[-1]
    assert len(repos.asked) == 2
