"""Optimisers: Muon for the 2-D block matrices, Adam for embeddings and control tensors.

Muon step for a matrix W with gradient G (nesterov momentum μ, lr η, weight decay λ):
  B = μ·B + G;  U = NS5(G + μ·B);  W = (1 - η·λ)·W - η·sqrt(max(1, rows/cols))·U
NS5 is five Newton–Schulz iterations X <- aX + (bA + cA²)X with A = XXᵀ and
(a, b, c) = (3.4445, -4.7750, 2.0315), in bf16, after X = G/|G|_F; it maps G to
roughly the orthogonal factor of its polar decomposition.

Under DDP every rank holds the same averaged gradients, so each rank computes
NS5 for every world_size-th matrix only, and one all-reduce of a flat bf16
buffer hands everyone all the updates.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainer.config import TrainerConfig
from trainer.quant import is_control_tensor

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximate orthogonalisation of a 2-D matrix (see the module docstring)."""
    a, b, c = NS_COEFFS
    x = g.bfloat16()
    x = x / (x.norm() + eps)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon with nesterov momentum and decoupled weight decay (2-D parameters only)."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            flat = torch.zeros(sum(p.numel() for p in params), dtype=torch.bfloat16, device=params[0].device)
            offset = 0
            for i, p in enumerate(params):
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                if i % world == rank:
                    u = newton_schulz5(p.grad.add(buf, alpha=group["momentum"]), group["ns_steps"])
                    u = u * max(1.0, p.size(0) / p.size(1)) ** 0.5
                    flat[offset:offset + p.numel()] = u.reshape(-1)
                offset += p.numel()
            if world > 1:
                dist.all_reduce(flat)
            offset = 0
            for p in params:
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.add_(flat[offset:offset + p.numel()].view_as(p), alpha=-group["lr"])
                offset += p.numel()


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
    muon = Muon(groups["matrix"], lr=cfg.matrix_lr, momentum=cfg.muon_momentum_warmup_start, weight_decay=cfg.muon_wd, ns_steps=cfg.muon_backend_steps)
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
