"""Fixtures of the trainer tests: one real smoke corpus (SentencePiece tokenizer + shards) per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data import build_smoke_corpus


class SmokeCorpus(type(Path())):
    """The corpus root folder (``corpus / "datasets" / ...`` works) with the trainer's paths as attributes."""

    vocab_size = 1024

    @property
    def data_path(self) -> Path:
        return Path(self) / "datasets" / f"fineweb10B_sp{self.vocab_size}"

    @property
    def tokenizer_path(self) -> Path:
        return Path(self) / "tokenizers" / f"fineweb_{self.vocab_size}_bpe.model"

    def __getitem__(self, key: str):  # dict-style access too: corpus["data_path"]
        return getattr(self, key)


@pytest.fixture(scope="session")
def smoke_corpus(tmp_path_factory) -> SmokeCorpus:
    """Built once per test session from Python's own docs: vocab 1024, data_path, tokenizer_path."""
    root = tmp_path_factory.mktemp("smoke_corpus")
    paths = build_smoke_corpus(root, vocab_size=SmokeCorpus.vocab_size)
    corpus = SmokeCorpus(root)
    assert corpus.data_path == paths.data_path and corpus.tokenizer_path == paths.tokenizer_path
    return corpus
