"""Byte accounting for val_bpb: how many UTF-8 bytes of text each scored token stands for.

For a target token t whose previous token is p:
    bytes(t) = base_bytes[t] + (has_leading_space[t] AND NOT is_boundary[p])
with the tables read from the SentencePiece model:
  - control, unknown and unused ids: boundary tokens, 0 bytes;
  - byte-fallback ids (<0x00>..<0xFF>): 1 byte;
  - any other piece: the UTF-8 length of the piece after stripping a leading "▁"
    (U+2581), which sets has_leading_space (the space is text only when something
    other than a boundary precedes it: SentencePiece drops the space at a document start).
val_bpb = (val_loss / ln 2) · (scored tokens / scored bytes).

CaseOps data (CASEOPS_ENABLED, trainer/caseops.py) is tokenized from transformed text, so a piece's
own bytes are not the original text's: the val split then carries a byte sidecar
(``fineweb_val_bytes_*.bin``, one count per val token) and a target's bytes are the sidecar's count
at its position in the val stream, whatever its previous token (the tables are not used).
"""

from __future__ import annotations

from dataclasses import dataclass

import sentencepiece as spm
import torch

SPACE_MARK = "\u2581"  # SentencePiece's visible space


@dataclass
class ByteLUTs:
    """Per-token-id tables, each of length vocab_size; or, for CaseOps data, the val stream's byte sidecar."""

    base_bytes: torch.Tensor  # int32
    has_leading_space: torch.Tensor  # bool
    is_boundary: torch.Tensor  # bool
    sidecar: torch.Tensor | None = None  # int32, one count per val token: replaces the tables when set

    @classmethod
    def from_sentencepiece(cls, model_path: str, vocab_size: int) -> "ByteLUTs":
        """Tables for ids 0..vocab_size-1; ids past the tokenizer's vocabulary (padding of the
        embedding) are boundary tokens with 0 bytes."""
        sp = spm.SentencePieceProcessor(model_file=str(model_path))
        n = sp.vocab_size()
        if n > vocab_size:
            raise ValueError(f"tokenizer {model_path} has {n} pieces but VOCAB_SIZE={vocab_size}; the model could not emit them all")
        base = torch.zeros(vocab_size, dtype=torch.int32)
        space = torch.zeros(vocab_size, dtype=torch.bool)
        boundary = torch.ones(vocab_size, dtype=torch.bool)
        for i in range(n):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            if piece.startswith(SPACE_MARK):
                space[i] = True
                piece = piece[1:]
            base[i] = len(piece.encode("utf-8"))
        return cls(base, space, boundary)

    @classmethod
    def from_sidecar(cls, sidecar: torch.Tensor) -> "ByteLUTs":
        """CaseOps: the original bytes of each val token as a target (as long as the val stream)."""
        empty = torch.zeros(0, dtype=torch.int32)
        return cls(empty, empty.bool(), empty.bool(), sidecar.to(torch.int32))

    def to(self, device: torch.device | str) -> "ByteLUTs":
        sidecar = None if self.sidecar is None else self.sidecar.to(device)
        return ByteLUTs(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device), sidecar)


def token_bytes(prev: torch.Tensor, tgt: torch.Tensor, luts: ByteLUTs, pos: torch.Tensor | None = None) -> torch.Tensor:
    """Bytes of each target token given its previous token (same shapes), as int32. With a sidecar
    (CaseOps), ``pos`` (same shape) is each target's position in the val stream and its count is read there."""
    if luts.sidecar is not None:
        if pos is None:
            raise ValueError("CaseOps byte counts need each target's position in the val stream")
        return luts.sidecar[pos]
    return luts.base_bytes[tgt] + (luts.has_leading_space[tgt] & ~luts.is_boundary[prev]).to(torch.int32)
