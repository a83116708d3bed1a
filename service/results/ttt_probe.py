"""A perturbation probe of score-first test-time training (the ``ttt_protocol`` rule for the
shared trainer): change one later validation token, and no earlier target's prediction may change.

Legal TTT scores chunk k with weights adapted on chunks < k only, so a token at position p
can influence only targets from p - 1 on. TTT that adapts on a chunk before scoring it (the
illegal order) lets the token change the predictions of earlier targets in its own chunk.

The probe runs the trainer's own evaluation twice (the token at p as it is, then changed),
records the logits of every scoring forward pass (inference mode), maps each window row to
its position in the stream, and compares the logits of every target t < p - 1 in the chunk
that scores it. It needs no knowledge of the model: a wrapper passes every call through.
Tested in CI on the CPU (tests/results/test_ttt_probe.py) against the real trainer and an
illegal variant it must catch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class _Recorder(nn.Module):
    """The model, passed through; records (score phase, inputs, logits) of inference-mode calls.
    A phase is a run of scoring calls between adaptation steps (one TTT chunk)."""

    def __init__(self, inner: Any):  # a GPT: forward_logits is not on nn.Module's type
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._phase = -1
        self._scoring = False

    def forward_logits(self, idx: torch.Tensor) -> torch.Tensor:
        out = self.inner.forward_logits(idx)
        if torch.is_inference_mode_enabled():
            if not self._scoring:
                self._phase += 1
                self._scoring = True
            self.calls.append((self._phase, idx.detach().cpu().clone(), out.detach().float().cpu().clone()))
        return out

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> Any:
        self._scoring = False
        return self.inner(idx, targets)


@dataclass(frozen=True)
class ProbeResult:
    position: int  # the changed token
    compared: int  # target predictions compared (targets before position - 1)
    changed: list[int]  # targets whose prediction changed: empty when score-first holds

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not self.changed

    def reason(self) -> str:
        if self.compared == 0:
            return f"the probe compared no target before position {self.position}"
        if self.changed:
            return (f"changing validation token {self.position} changed the predictions of {len(self.changed)} earlier "
                    f"target(s) (first: {self.changed[0]}): adapted before scoring")
        return f"changing validation token {self.position} changed none of {self.compared:,} earlier targets' predictions"


def _predictions(calls: Sequence[tuple[int, torch.Tensor, torch.Tensor]], tokens: torch.Tensor,
                 chunks: Sequence[tuple[int, int]], before: int) -> dict[int, torch.Tensor]:
    """target -> logits, for targets < ``before`` as scored in their own chunk's phase."""
    stream = tokens.tolist()
    starts: dict[int, dict[tuple[int, ...], int]] = {}
    out: dict[int, torch.Tensor] = {}
    for phase, x, logits in calls:
        if phase >= len(chunks):
            continue
        a, b = chunks[phase]
        w = x.shape[1]
        index = starts.setdefault(w, {tuple(stream[s:s + w]): s for s in range(len(stream) - w, -1, -1)})
        for row in range(x.shape[0]):
            s = index.get(tuple(x[row].tolist()))
            if s is None:
                continue
            for i in range(w):
                t = s + i
                if a <= t < min(b, before):
                    out.setdefault(t, logits[row, i])
    return out


def probe_score_first(evaluate: Callable[[nn.Module, torch.Tensor], Any], make_model: Callable[[], nn.Module],
                      tokens: torch.Tensor, chunks: Sequence[tuple[int, int]], position: int, vocab_size: int,
                      atol: float = 1e-5) -> ProbeResult:
    """Run ``evaluate(model, tokens)`` on the stream as it is and with token ``position`` changed;
    ``chunks`` are the TTT chunks' target ranges in scoring order (the trainer's ttt_chunk_bounds)."""
    if not 1 < position < tokens.numel():
        raise ValueError(f"position {position} must be inside the stream of {tokens.numel()} tokens")
    changed_tokens = tokens.clone()
    changed_tokens[position] = (int(tokens[position]) + 1) % vocab_size
    runs = []
    for stream in (tokens, changed_tokens):
        model = _Recorder(make_model())
        evaluate(model, stream)
        runs.append(_predictions(model.calls, stream, chunks, position - 1))
    same, other = runs
    common = sorted(set(same) & set(other))
    changed = [t for t in common if not torch.allclose(same[t], other[t], atol=atol, rtol=0)]
    return ProbeResult(position, len(common), changed)
