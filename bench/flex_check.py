"""FlexAttention (the CUDA path of DOC_ATTENTION) against the dense document mask on SDPA: forward and
the gradients of q, k, v, in fp32 and bf16, on 4 x 2,048 tokens with 12 random document starts a row.
Not a test; needs a GPU (the CPU counterpart runs in CI:
tests/trainer/test_frontier_model.py::test_flex_document_attention_equals_the_dense_document_mask).

Usage: PYTHONPATH=. python bench/flex_check.py   (figures in bench/results/trainer_frontier.md)
"""

import torch

from trainer.model import causal_attention, document_block_mask, document_mask

BOS = 1
gen = torch.Generator().manual_seed(3)
B, T, H, HKV, DH = 4, 2048, 8, 4, 64
idx = torch.randint(2, 50, (B, T), generator=gen)
for row in range(B):
    idx[row, torch.randint(0, T, (12,), generator=gen)] = BOS
idx[:, 0] = BOS
idx = idx.cuda()
for dtype in (torch.float32, torch.bfloat16):
    q, k, v = (torch.randn(B, T, h, DH, generator=gen).to("cuda", dtype).requires_grad_() for h in (H, HKV, HKV))
    flex = causal_attention(q, k, v, False, document_block_mask(idx, BOS))
    g_flex = torch.autograd.grad(flex.float().square().sum(), (q, k, v))
    dense = causal_attention(q, k, v, False, document_mask(idx, BOS))
    g_dense = torch.autograd.grad(dense.float().square().sum(), (q, k, v))
    rel = max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(g_flex, g_dense))
    print(f"{dtype} forward max |diff| {(flex - dense).abs().max().item():.3g}; gradients max |diff| / scale {rel:.3g}")
