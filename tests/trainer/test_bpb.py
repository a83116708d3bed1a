"""val_bpb's byte tables count exactly the UTF-8 bytes of the text the tokens decode to."""

import numpy as np
import pytest
import sentencepiece as spm
import torch

from trainer.bpb import ByteLUTs, token_bytes
from trainer.data import read_shard

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 2026; PyTorch 2.x runs fine.",
    "  two  spaces\n\nand\ttabs, trailing space ",
    "naïve café — 日本語 🙂 Ωμέγα",  # pieces outside the vocabulary go through byte fallback
    " leading space",
    "x",
]


@pytest.fixture(scope="module")
def sp_and_luts(smoke_corpus):
    sp = spm.SentencePieceProcessor(model_file=str(smoke_corpus.tokenizer_path))
    return sp, ByteLUTs.from_sentencepiece(str(smoke_corpus.tokenizer_path), 1024)


def stream_bytes(ids: list[int], luts: ByteLUTs) -> int:
    t = torch.tensor(ids)
    return int(token_bytes(t[:-1], t[1:], luts).sum())


@pytest.mark.parametrize("text", TEXTS)
def test_bytes_of_a_document_equal_its_utf8_length(sp_and_luts, text):
    sp, luts = sp_and_luts
    ids = sp.encode(text)
    decoded = sp.decode(ids)
    assert stream_bytes([sp.bos_id()] + ids, luts) == len(decoded.encode("utf-8"))
    assert decoded == text  # the tokenizer keeps text verbatim, so this is the original's length too


def test_documents_in_one_stream_count_each_documents_bytes(sp_and_luts):
    sp, luts = sp_and_luts
    ids: list[int] = []
    for text in TEXTS:
        ids += [sp.bos_id()] + sp.encode(text)
    assert stream_bytes(ids, luts) == sum(len(t.encode("utf-8")) for t in TEXTS)


def test_the_whole_val_split_counts_the_bytes_of_its_decoded_documents(smoke_corpus, sp_and_luts):
    sp, luts = sp_and_luts
    val = read_shard(smoke_corpus.data_path / "fineweb_val_000000.bin").astype(np.int64)
    starts = np.flatnonzero(val == sp.bos_id()).tolist() + [val.size]
    expected = sum(len(sp.decode(val[a + 1:b].tolist()).encode("utf-8")) for a, b in zip(starts, starts[1:]))
    assert stream_bytes(val.tolist(), luts) == expected > 50_000


def test_table_entries_follow_the_piece_kinds(sp_and_luts):
    sp, luts = sp_and_luts
    for i in (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()):
        assert luts.is_boundary[i] and luts.base_bytes[i] == 0 and not luts.has_leading_space[i]
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and all(luts.base_bytes[i] == 1 and not luts.is_boundary[i] for i in byte_ids)
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i)):
            assert bool(luts.has_leading_space[i]) == piece.startswith("\u2581")
            text = piece[1:] if piece.startswith("\u2581") else piece
            assert int(luts.base_bytes[i]) == len(text.encode("utf-8"))
    assert luts.base_bytes.dtype == torch.int32 and luts.is_boundary.dtype == luts.has_leading_space.dtype == torch.bool


def test_a_leading_space_counts_only_after_a_non_boundary_token():
    luts = ByteLUTs(base_bytes=torch.tensor([0, 3, 2], dtype=torch.int32),
                    has_leading_space=torch.tensor([False, True, False]),
                    is_boundary=torch.tensor([True, False, False]))
    prev, tgt = torch.tensor([0, 2, 1]), torch.tensor([1, 1, 2])
    assert token_bytes(prev, tgt, luts).tolist() == [3, 4, 2]


def test_vocab_padding_is_boundary_and_a_too_small_vocab_is_refused(smoke_corpus):
    padded = ByteLUTs.from_sentencepiece(str(smoke_corpus.tokenizer_path), 1100)
    assert padded.is_boundary[1024:].all() and (padded.base_bytes[1024:] == 0).all()
    with pytest.raises(ValueError, match="1024 pieces but VOCAB_SIZE=1000"):
        ByteLUTs.from_sentencepiece(str(smoke_corpus.tokenizer_path), 1000)
    moved = padded.to("cpu")
    assert torch.equal(moved.base_bytes, padded.base_bytes)
