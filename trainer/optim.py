"""Optimisers: Muon for the 2-D block matrices, Adam for embeddings and control tensors.

Muon step for a matrix W with gradient G (nesterov momentum μ, lr η, weight decay λ):
  B = μ·B + G;  U = NS5(G + μ·B);  W = (1 - η·λ)·W - η·sqrt(max(1, rows/cols))·U
NS5 is five Newton–Schulz iterations X <- aX + (bA + cA²)X with A = XXᵀ and
(a, b, c) = (3.4445, -4.7750, 2.0315), in bf16, after X = G/|G|_F; it maps G to
roughly the orthogonal factor of its polar decomposition. MUON_NS_COEFFS=polar_express
uses a different (a, b, c) per iteration (Polar Express); MUON_ROW_NORMALIZE scales each
row of G+μB to unit norm first (MuonEq-R), both as the 2026-04-27 record.

Under DDP every rank holds the same averaged gradients, so each rank computes
NS5 (and keeps momentum) for every world_size-th matrix only, and one
all-reduce of a flat bf16 buffer hands everyone all the updates.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainer.config import TrainerConfig
from trainer.quant import is_control_tensor

NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Polar Express (arXiv 2505.16932): a minimax-optimal (a, b, c) per iteration, as the 2026-04-27 record uses them.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def ns_coefficients(kind: str, steps: int) -> list[tuple[float, float, float]]:
    """(a, b, c) of each iteration: the fixed quintic, or Polar Express's first STEPS (at most 5)."""
    if kind == "polar_express":
        return list(POLAR_EXPRESS_COEFFS[:steps])
    return [NS_COEFFS] * steps


def row_normalize(u: Tensor, eps: float = 1e-7) -> Tensor:
    """MuonEq-R: each row of the update scaled to unit L2 norm before the orthogonalisation."""
    return u / u.float().norm(dim=-1, keepdim=True).clamp_min(eps).to(u.dtype)


def newton_schulz5(g: Tensor, steps: int = 5, eps: float = 1e-7, coeffs: str = "standard") -> Tensor:
    """Approximate orthogonalisation of a matrix, or of a stack of them [..., rows, cols]
    (see the module docstring).

    Each iteration is three matmul kernels and nothing else: A = XXᵀ, then
    B = b·A + c·A·A and X = a·X + B·X as baddbmm, whose beta/alpha fold the
    element-wise sums into the matmul's epilogue instead of extra passes over memory.
    """
    x = g.bfloat16()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(0)
    x = x.contiguous()
    for a, b, c in ns_coefficients(coeffs, steps):
        A = torch.bmm(x, x.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        x = torch.baddbmm(x, B, x, beta=a, alpha=1.0)
    if squeeze:
        x = x.squeeze(0)
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon with nesterov momentum and decoupled weight decay (2-D parameters only).

    Matrices of one shape are orthogonalised together as one batched NS5 (few large
    kernels instead of many small ones), and momentum, weight decay and the update use
    multi-tensor (foreach) kernels; under DDP each rank takes every world_size-th
    matrix of each shape.
    """

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, ns_steps: int = 5,
                 ns_coeffs: str = "standard", row_norm: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps,
                                      ns_coeffs=ns_coeffs, row_norm=row_norm))

    @torch.no_grad()
    def step(self) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            mu, lr = group["momentum"], group["lr"]
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            updates: list[Tensor | None] = [None] * len(params)
            for (rows, cols), members in by_shape.items():
                mine = members[rank::world]
                if not mine:
                    continue
                # Momentum for this shape's matrices in a few multi-tensor kernels.
                bufs = [self.state[params[i]].setdefault("momentum_buffer", torch.zeros_like(params[i])) for i in mine]
                grads = [params[i].grad for i in mine]
                torch._foreach_mul_(bufs, mu)
                torch._foreach_add_(bufs, grads)
                nesterov = torch._foreach_add(grads, bufs, alpha=mu)
                stacked = torch.stack(nesterov)
                if group["row_norm"]:
                    stacked = row_normalize(stacked)
                u = newton_schulz5(stacked, group["ns_steps"], coeffs=group["ns_coeffs"]) * max(1.0, rows / cols) ** 0.5
                for j, i in enumerate(mine):
                    updates[i] = u[j]
            if world > 1:
                # Every rank fills only its own matrices' updates; one all-reduce shares them.
                offsets = [0]
                for p in params:
                    offsets.append(offsets[-1] + p.numel())
                flat = torch.zeros(offsets[-1], dtype=torch.bfloat16, device=params[0].device)
                for i, u_i in enumerate(updates):
                    if u_i is not None:
                        flat[offsets[i]:offsets[i + 1]] = u_i.reshape(-1)
                dist.all_reduce(flat)
                updates = [flat[offsets[i]:offsets[i + 1]].view_as(p) for i, p in enumerate(params)]
            torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
            torch._foreach_add_(params, [u_i.to(p.dtype) for u_i, p in zip(updates, params)], alpha=-lr)


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Which optimiser owns each parameter.

    matrix: 2-D weights of linear layers (Muon); embed: embedding tables (Adam,
    tied-embedding lr); scalar: gates, scales, mixes, skip weights (Adam, scalar lr).
    """
    groups: dict[str, list[nn.Parameter]] = {"matrix": [], "embed": [], "scalar": []}
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, p in model.named_parameters():
        if id(p) in embed_ids:
            groups["embed"].append(p)
        elif is_control_tensor(name, p) or p.ndim != 2:
            groups["scalar"].append(p)
        else:
            groups["matrix"].append(p)
    return groups


def build_optimizers(model: nn.Module, cfg: TrainerConfig) -> list[torch.optim.Optimizer]:
    """[Muon(matrices), Adam(embeddings, scalars)]; every group remembers its base lr."""
    groups = split_parameters(model)
    fused = next(model.parameters()).is_cuda
    adam = torch.optim.AdamW(
        [
            dict(params=groups["embed"], lr=cfg.tied_embed_lr, base_lr=cfg.tied_embed_lr),
            dict(params=groups["scalar"], lr=cfg.scalar_lr, base_lr=cfg.scalar_lr),
        ],
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.adam_wd,
        fused=fused,
    )
    muon = Muon(groups["matrix"], lr=cfg.matrix_lr, momentum=cfg.muon_momentum_warmup_start, weight_decay=cfg.muon_wd, ns_steps=cfg.muon_backend_steps,
                ns_coeffs=cfg.muon_ns_coeffs, row_norm=cfg.muon_row_normalize)
    for g in muon.param_groups:
        g["base_lr"] = cfg.matrix_lr
    return [muon, adam]


def muon_momentum_at(step: int, cfg: TrainerConfig) -> float:
    """Linear warm-up from MUON_MOMENTUM_WARMUP_START to MUON_MOMENTUM over the warm-up steps."""
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0) if cfg.muon_momentum_warmup_steps else 1.0
    return (1.0 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


def set_schedule(optimizers: list[torch.optim.Optimizer], lr_scale: float, step: int, cfg: TrainerConfig) -> None:
    """Apply the LR scale to every group and the warmed-up momentum to Muon."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_scale
            if isinstance(opt, Muon):
                g["momentum"] = muon_momentum_at(step, cfg)
