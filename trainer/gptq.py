"""Full-Hessian GPTQ with std-based clipping (SDClip), LQER error correction and the int8 gate
rows: the 2026-04-27 record's quantiser, switched on by GPTQ, LQER_ENABLED and ATTN_GATE_INT8.

GPTQ (Frantar et al. 2022) quantises a weight W [rows, cols] one input column at a time and
pushes each column's rounding error onto the columns not yet quantised, weighted by the
inverse Hessian of the layer's inputs, H = Σ xᵀx over calibration tokens:
    e_j = (w_j - q_j·s) / U_jj,   W[:, j+1:] -= e_j · U[j, j+1:],   U = chol(H⁻¹)ᵀ (upper)
Columns go in order of decreasing H_jj ("act-order"), H is damped by 1% of its mean
diagonal, and the error reaches far columns in blocks of GPTQ_BLOCK_SIZE (lazy batch update).

SDClip: one scale per row from the row's standard deviation, s = fp16(k·std(w_row) / qmax),
k = *_CLIP_SIGMAS by tensor group; values beyond qmax·s clip.

LQER: for the GPTQ or per-row quantised tensors with the largest error E = W - q·s (Frobenius
norm, the LQER_TOP_K first), a rank-r SVD E ≈ A·B is stored too, A = U_r·S_r, B = V_rᵀ, as
int factors: asymmetric (A in int2 [-2, 1] with one scale, s_A = max|A| / 1.5; B in int4
[-8, 7] per group of LQER_ASYM_GROUP values, s_B = max|g| / 7.5) or symmetric (both per row,
LQER_FACTOR_BITS bits). The weight loaded is q·s + Â·B̂.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def collect_hessians(model: nn.Module, batches, linear_type: type) -> dict[str, Tensor]:
    """H = (1/n) Σ_batches XᵀX for the input X of every ``linear_type`` module (keyed by its
    weight's name), and for the tied embedding the final normalised hidden states (the input of
    the logit projection), keyed ``tok_emb.weight``; float32 on the CPU.

    ``batches`` yields token batches [B, T]; the model runs ``hidden`` (plus ``lm_head`` when
    untied) without gradients. Looped blocks add one term per pass, as in the record.
    """
    sums: dict[str, Tensor] = {}

    def add(name: str, x: Tensor) -> None:
        x = x.detach().float().reshape(-1, x.size(-1))
        if name not in sums:
            sums[name] = torch.zeros(x.size(1), x.size(1), dtype=torch.float32, device=x.device)
        sums[name].addmm_(x.T, x)

    hooks = [m.register_forward_hook(lambda _mod, inp, _out, n=name + ".weight": add(n, inp[0]))
             for name, m in model.named_modules() if isinstance(m, linear_type)]
    n = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                h = model.hidden(x)
                if getattr(model, "lm_head", None) is not None:
                    model.lm_head(h)
                else:
                    add("tok_emb.weight", h)
                n += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


def gptq_quantize(w: Tensor, H: Tensor, clip_sigmas: float, qmax: int, block_size: int = 128) -> tuple[Tensor, Tensor]:
    """GPTQ of one matrix with SDClip scales (module docstring).

    Returns (q int8 [rows, cols] in [-qmax, qmax], s fp16 [rows]); w ≈ q·s. Runs on the CPU:
    the column loop is sequential, and the same float operations in the same order on every
    rank give every rank the same integers.
    """
    w = w.detach().float().cpu()
    rows, cols = w.shape
    H = H.detach().float().cpu().clone()
    dead = H.diagonal() == 0  # inputs never active: their weights cannot matter
    H[dead, dead] = 1
    H.diagonal().add_(0.01 * H.diagonal().mean())
    order = torch.argsort(H.diagonal(), descending=True)
    work = w[:, order].clone()
    work[:, dead[order]] = 0
    H = H[order][:, order]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    s16 = (clip_sigmas * w.std(dim=1) / qmax).clamp_min(1e-10).to(torch.float16)
    s = s16.float()
    q = torch.zeros(rows, cols, dtype=torch.int8)
    for a in range(0, cols, block_size):
        b = min(a + block_size, cols)
        block = work[:, a:b].clone()
        Ub = U[a:b, a:b]
        err = torch.zeros(rows, b - a)
        for j in range(b - a):
            col = block[:, j]
            qc = torch.clamp(torch.round(col / s), -qmax, qmax)
            q[:, a + j] = qc.to(torch.int8)
            e = (col - qc.float() * s) / Ub[j, j]
            err[:, j] = e
            block[:, j:] -= e.unsqueeze(1) * Ub[j, j:].unsqueeze(0)
        if b < cols:
            work[:, b:] -= err @ U[a:b, b:]
    return q[:, torch.argsort(order)], s16


def quantize_gate_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """int8 per row for the attention-gate weights: s = fp16(max|w_row| / 127), q = round(w / s)."""
    w = w.detach().float().cpu()
    s16 = (w.abs().amax(dim=1).clamp_min(1e-10) / 127.0).to(torch.float16)
    q = torch.clamp(torch.round(w / s16.float().view(-1, 1)), -127, 127).to(torch.int8)
    return q, s16


def lqer_factors(err: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Rank-r SVD factors of the quantisation error: (A = U_r·S_r [rows, r], B = V_rᵀ [r, cols])."""
    U, S, Vh = torch.linalg.svd(err, full_matrices=False)
    r = min(rank, S.numel())
    return (U[:, :r] * S[:r]).contiguous(), Vh[:r, :].contiguous()


def lqer_pack(A: Tensor, B: Tensor, *, asym: bool, group: int, bits: int) -> dict[str, Tensor]:
    """The stored factors (module docstring): {"la", "las", "lb", "lbs"}, int8 values, fp16 scales.
    Asymmetric needs B's size to be a multiple of ``group``; callers fall back to symmetric."""
    if asym:
        sA = (A.abs().amax().clamp_min(1e-10) / 1.5).to(torch.float16)
        qA = torch.clamp(torch.round(A / sA.float()), -2, 1).to(torch.int8)
        Bg = B.reshape(-1, group)
        sB = (Bg.abs().amax(dim=-1, keepdim=True).clamp_min(1e-10) / 7.5).to(torch.float16).reshape(-1)
        qB = torch.clamp(torch.round(Bg / sB.float().reshape(-1, 1)), -8, 7).to(torch.int8).reshape(B.shape)
        return {"la": qA, "las": sA, "lb": qB, "lbs": sB}
    rng = 2 ** (bits - 1) - 1
    sA = (A.abs().amax(dim=1).clamp_min(1e-10) / rng).to(torch.float16)
    sB = (B.abs().amax(dim=1).clamp_min(1e-10) / rng).to(torch.float16)
    qA = torch.clamp(torch.round(A / sA.float().view(-1, 1)), -rng, rng).to(torch.int8)
    qB = torch.clamp(torch.round(B / sB.float().view(-1, 1)), -rng, rng).to(torch.int8)
    return {"la": qA, "las": sA, "lb": qB, "lbs": sB}


def lqer_correction(e: dict) -> Tensor:
    """Â·B̂ from stored factors (asymmetric when "las" is one number)."""
    if e["las"].ndim == 0:
        A = e["la"].float() * float(e["las"])
        g = e["lb"].numel() // e["lbs"].numel()
        B = (e["lb"].reshape(-1, g).float() * e["lbs"].float().view(-1, 1)).reshape(e["lb"].shape)
    else:
        A = e["la"].float() * e["las"].float().view(-1, 1)
        B = e["lb"].float() * e["lbs"].float().view(-1, 1)
    return A @ B
