"""FlashAttention 3's Python interface on a GPU image without it, through PyTorch (bench only).

For running the challenge's records beside caddie (``bench/vs_reference.py --fa3 bench/fa3_standin``):

* ``flash_attn_func(q, k, v, causal)``: q, k, v [B, T, H, D] -> SDPA (cuDNN or flash on CUDA);
* ``flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, ...)``: q, k, v [total, H, D], the
  documents given by cu_seqlens -> FlexAttention with a per-document causal block mask.

cu_seqlens may be padded with repeats of the total length: the 2026-04-27 record pads it to a multiple
of 64 entries so its compiled graphs see a few shapes only. The stand-in in ../shared/reference marks
document starts by indexing with every entry, so a pad (== total) is out of bounds and the record dies
in its first warm-up with a device assert; here a position's document is the number of document ends
at or before it (searchsorted), which pads do not change.

The block mask is built from each 128-position block's first and last document (documents are
contiguous, so that range is the block's), never from a [total, total] grid: the record packs a
micro-batch into one row of 98,304 positions, where create_block_mask's grid is 9.7e9 entries, and
inside the record's fullgraph compile its first warm-up made no step in 9 minutes on an H100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK = 128  # FlexAttention's default sparse block

_compiled_flex = None


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, **_: object) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION] if q.is_cuda else [SDPBackend.MATH]
    with sdpa_kernel(backends):
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])
    return y.transpose(1, 2)


def document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """The document of each of ``total`` positions: how many document ends (cu_seqlens[1:]) are <= it."""
    positions = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), positions, right=True)


def _sorted_blocks(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, indices) of the kept kv blocks of each q block, kept ones first, as BlockMask takes them."""
    count = keep.sum(-1, dtype=torch.int32)
    order = torch.argsort(keep.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return count[None, None], order[None, None]


def document_block_mask(doc: torch.Tensor, total: int, causal: bool) -> BlockMask:
    """The per-document (causal) BlockMask of ``total`` positions whose documents are ``doc``
    (non-decreasing), in O(blocks^2): blocks that share no document are skipped, blocks inside one
    document (and wholly below the diagonal) need no mask, the rest get the mask per position."""
    n = -(-total // BLOCK)
    padded = torch.cat([doc, doc[-1:].expand(n * BLOCK - total)])  # a last partial block: its last document
    first, last = padded.view(n, BLOCK)[:, 0], padded.view(n, BLOCK)[:, -1]
    meets = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    whole = (first == last) & (torch.arange(n, device=doc.device) < total // BLOCK)  # one document, no pad
    full = whole[:, None] & whole[None, :] & (first[:, None] == first[None, :])
    qb, kb = torch.arange(n, device=doc.device)[:, None], torch.arange(n, device=doc.device)[None, :]
    if causal:
        meets, full = meets & (kb <= qb), full & (kb < qb)
    partial = meets & ~full

    def same_document(b, h, qi, ki):  # noqa: ANN001, ANN202 - FlexAttention's mask signature
        last_pos = total - 1  # positions past the end (a last partial block) read the last document
        same = doc[qi.clamp(max=last_pos)] == doc[ki.clamp(max=last_pos)]
        return same & (qi >= ki) if causal else same

    return BlockMask.from_kv_blocks(*_sorted_blocks(partial), *_sorted_blocks(full), BLOCK_SIZE=BLOCK,
                                    mask_mod=same_document, seq_lengths=(total, total))


def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                           causal: bool = True, **_: object) -> torch.Tensor:
    global _compiled_flex
    total = q.shape[0]
    doc = document_ids(cu_seqlens_q, total)

    block = document_block_mask(doc, total, causal)
    attend = flex_attention
    if q.is_cuda:  # compiled, or FlexAttention materialises every score
        _compiled_flex = _compiled_flex or torch.compile(flex_attention, dynamic=False)
        attend = _compiled_flex
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    if not q.is_cuda:  # inductor's CPU FlexAttention template takes no strided view of its inputs
        qh, kh, vh = qh.contiguous(), kh.contiguous(), vh.contiguous()
    y = attend(qh, kh, vh, block_mask=block, enable_gqa=kh.shape[1] != qh.shape[1])
    return y.squeeze(0).transpose(0, 1)
