"""bench/fa3_standin: the FlashAttention 3 stand-in the records run on in bench/vs_reference.py equals
attention computed one document at a time, with cu_seqlens padded as the 2026-04-27 record pads it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("fa3_standin", REPO / "bench" / "fa3_standin" / "flash_attn_interface.py")
assert _spec and _spec.loader
fa3 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fa3)


def per_document(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    out = []
    for a, b in zip(bounds, bounds[1:]):
        qd, kd, vd = (t[a:b].transpose(0, 1) for t in (q, k, v))
        out.append(F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True).transpose(0, 1))
    return torch.cat(out)


def test_varlen_equals_per_document_attention_with_padded_cu_seqlens() -> None:
    torch.manual_seed(0)
    total, bounds = 256, [0, 37, 38, 130, 200, 256]
    q = torch.randn(total, 4, 16)
    k, v = torch.randn(total, 2, 16), torch.randn(total, 2, 16)
    padded = torch.tensor(bounds + [total] * 10, dtype=torch.int32)  # the record pads with the total length
    y = fa3.flash_attn_varlen_func(q, k, v, padded, padded, max_seqlen_q=total, max_seqlen_k=total, causal=True)
    assert torch.allclose(y, per_document(q, k, v, bounds), atol=1e-5)
    assert fa3.document_ids(padded, total).tolist() == [0] * 37 + [1] + [2] * 92 + [3] * 70 + [4] * 56


def test_dense_call_is_causal_attention_in_fa3s_layout() -> None:
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 64, 4, 16), torch.randn(2, 64, 2, 16), torch.randn(2, 64, 2, 16)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True)
    assert torch.allclose(fa3.flash_attn_func(q, k, v, causal=True), want.transpose(1, 2), atol=1e-6)
