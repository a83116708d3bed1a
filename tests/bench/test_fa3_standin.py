"""bench/fa3_standin: the FlashAttention 3 stand-in the records run on in bench/vs_reference.py equals
attention computed one document at a time, with cu_seqlens padded as the 2026-04-27 record pads it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("fa3_standin", REPO / "bench" / "fa3_standin" / "flash_attn_interface.py")
assert _spec and _spec.loader
fa3 = importlib.util.module_from_spec(_spec)
sys.modules["fa3_standin"] = fa3  # torch.compile looks the module up by name
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


def test_block_mask_of_a_long_row_skips_blocks_across_documents_and_stays_exact() -> None:
    # 700 positions (not a multiple of 128), one document over 300 positions: full blocks, skipped
    # blocks and a last partial block all occur, as in the record's 98,304-position micro-batch.
    torch.manual_seed(2)
    total, bounds = 700, [0, 300, 301, 420, 650, 700]
    q = torch.randn(total, 4, 16)
    k, v = torch.randn(total, 2, 16), torch.randn(total, 2, 16)
    cu = torch.tensor(bounds + [total] * 3, dtype=torch.int32)
    y = fa3.flash_attn_varlen_func(q, k, v, cu, cu, causal=True)
    assert torch.allclose(y, per_document(q, k, v, bounds), atol=1e-5)
    mask = fa3.document_block_mask(fa3.document_ids(cu, total), total, causal=True)
    dense = mask.to_dense()[0, 0]  # [q blocks, kv blocks]: 1 where a block is computed
    assert dense.tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                              [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    assert mask.full_kv_num_blocks[0, 0].tolist() == [0, 1, 0, 0, 0, 0]  # block 1 x block 0: one document, below the diagonal


def test_varlen_compiles_inside_a_fullgraph_model_as_the_record_compiles_it() -> None:
    torch.manual_seed(3)
    total, bounds = 384, [0, 100, 256, 384]
    q = torch.randn(total, 4, 16)
    k, v = torch.randn(total, 2, 16), torch.randn(total, 2, 16)
    cu = torch.tensor(bounds + [total] * 5, dtype=torch.int32)
    compiled = torch.compile(lambda a, b, c, s: fa3.flash_attn_varlen_func(a, b, c, s, s, causal=True), fullgraph=True, dynamic=False)
    assert torch.allclose(compiled(q, k, v, cu), per_document(q, k, v, bounds), atol=1e-4)
