"""Where one training step of the default config spends its GPU time (not a test).

Builds the model and optimisers exactly as trainer.train does, compiles, warms up,
then profiles two full steps (8 micro-steps of 48 x 2048 tokens each, optimiser,
EMA) with torch.profiler and prints the top kernels by CUDA time and the share of
the step the GPU was busy. Random tokens: the kernels do not depend on the data.

    python bench/profile_step.py [--set KNOB=VALUE ...] [--buffer-qat] [--no-profile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trainer.model  # noqa: E402
from trainer.config import TrainerConfig  # noqa: E402
from trainer.model import GPT  # noqa: E402
from trainer.optim import build_optimizers, set_schedule  # noqa: E402
from trainer.train import tune_inductor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--no-profile", action="store_true", help="only time the step")
    ap.add_argument("--timed-steps", type=int, default=10)
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    ap.add_argument("--buffer-qat", action="store_true",
                    help="the pre-issue-9 BlockLinear: w + qat·(fq(w) - w) with a 0/1 buffer, fake-quant always in the graph")
    args = ap.parse_args()
    if args.buffer_qat:
        from trainer.quant import fake_quant_int6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.weight
            return torch.nn.functional.linear(x, w + self.qat_buf * (fake_quant_int6(w, self.clip_floor) - w))

        trainer.model.BlockLinear.forward = forward
    cfg = TrainerConfig.from_dict(dict(kv.split("=", 1) for kv in args.set))
    device = torch.device("cuda")
    accum = cfg.grad_accum_steps or 8
    seqs = cfg.train_batch_tokens // accum // cfg.train_seq_len
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    if args.buffer_qat:
        for m in model.modules():
            if isinstance(m, trainer.model.BlockLinear):
                m.register_buffer("qat_buf", torch.zeros((), device=device), persistent=False)
    tune_inductor()
    step_model = torch.compile(model, dynamic=False, mode=args.compile_mode)
    graphs = args.compile_mode in ("reduce-overhead", "max-autotune")
    optimizers = build_optimizers(model, cfg)
    params = list(model.parameters())
    ema = [p.detach().float().clone() for p in params]
    batches = [torch.randint(0, cfg.vocab_size, (seqs, cfg.train_seq_len + 1), device=device) for _ in range(accum)]

    losses: list[torch.Tensor] = []

    def step(i: int) -> None:
        set_schedule(optimizers, 1.0, i, cfg)
        total = torch.zeros((), device=device)
        for b in batches:
            if graphs:  # each micro-step is a new iteration for CUDA graph trees
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = step_model(b[:, :-1], b[:, 1:])
            (loss / accum).backward()
            total += loss.detach()
        losses.append(total / accum)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - cfg.ema_decay)

    for i in range(4):
        step(i)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(args.timed_steps):
        step(i)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t) / args.timed_steps * 1000
    print(f"step: {ms:.1f} ms ({seqs} x {cfg.train_seq_len} tokens x {accum} micro-steps; "
          f"{'buffer QAT; ' if args.buffer_qat else ''}compile mode {args.compile_mode or 'default'}; knobs {' '.join(args.set) or 'default'})")
    # Same seed, model and batches in every invocation: the losses tell whether a compile
    # mode still computes the same training (they drift only by bf16 nondeterminism).
    print("losses: " + " ".join(f"{float(x):.4f}" for x in losses))
    if args.no_profile:
        return

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(2):
            step(i)
        torch.cuda.synchronize()
    events = prof.key_averages()
    # Kernels only: operator rows repeat the time of the kernels they launch.
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_cuda = sum(e.device_time_total for e in kernels) / 1000 / 2
    print(f"GPU busy per step: {total_cuda:.1f} ms of {ms:.1f} ms ({100 * total_cuda / ms:.0f}%)")
    print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=160))


if __name__ == "__main__":
    main()
