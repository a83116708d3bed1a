"""The artifact: int6/int8 per-row quantisation, lzma (or zstd) packing, and the fake-quant
used by late QAT.

Which format each tensor of the state dict gets:
- control tensors (gates, scales, mixes; see ``is_control_tensor``): fp16 (``CONTROL_DTYPE``,
  as the records store them: every control tensor is small) or fp32, unchanged;
- the token embedding (name contains ``tok_emb``) when larger than 65,536 elements:
  int8 per row, values in [-127, 127];
- any other floating tensor with more than 65,536 elements: int6 per row, values in
  [-31, 31] (stored one per byte; the compressor squeezes out the two idle bits);
- everything else: fp16.

Per-row quantisation with clip c, qmax Q and clip floor F (``QUANT_CLIP_FLOOR``):
    s = fp16(max(c, F) / Q),   q = clamp(round(w / s), -Q, Q),   w ≈ q·s.
"GPTQ-lite": c is picked per row among the 99.90, 99.95, 99.99, 99.999 and 100th
percentiles of |w_row|, whichever minimises sum((q·s - w)²).

Why the floor: a row whose clip is below F is quantised on the grid of a row whose
clip equals F (step F/Q), so small rows use few levels. Without it, every row gets
2Q+1 levels however small its values are: a freshly initialised 512-wide matrix
(row max ≈ 0.15) then costs ≈ 5.3 bits per weight after compression instead of
≈ 2, and the artifact of the default model is ~10 MB at init instead of ~4.5 MB.
The public records floor the scale the same way (F = 1 for int6 and int8). F = 0
turns the floor off. Late QAT uses the same floor, so training moves the weights
toward the grid the artifact will use.
"""

from __future__ import annotations

import io
import json
import lzma

import numpy as np
import torch
from torch import Tensor

QUANT_SMALL_NUMEL = 65_536
DEFAULT_CLIP_FLOOR = 1.0  # TrainerConfig.quant_clip_floor's default
DEFAULT_CONTROL_DTYPE = "fp16"  # TrainerConfig.control_dtype's default
CLIP_PERCENTILES = (99.90, 99.95, 99.99, 99.999, 100.0)
CONTROL_TENSOR_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights", "smear", "bigram.scale", "ve_scale", "attn_gate")
ARTIFACT_MAGIC = b"CADDIE1\n"


def is_control_tensor(name: str, t: Tensor) -> bool:
    """Gates, scales and mixes: few numbers that steer the network, never quantised to int."""
    return t.ndim < 2 or any(p in name for p in CONTROL_TENSOR_PATTERNS)


def fake_quant_int6(w: Tensor, clip_floor: float = DEFAULT_CLIP_FLOOR) -> Tensor:
    """Per-row int6 round trip with a straight-through gradient (late QAT).

    Forward: s = fp16(max(max|w_row|, F) / 31), q(w) = clamp(round(w / s), -31, 31)·s,
    with F = clip_floor. F and the fp16 rounding of s are the artifact quantiser's, so
    a row it clips at its max (and every row under the floor) lands on the same grid.
    Backward: dq/dw = 1 (the rounding is invisible to the gradient).
    """
    amax = w.detach().float().abs().amax(dim=-1, keepdim=True)
    s = (amax.clamp_min(max(clip_floor, 1e-8)) / 31.0).to(torch.float16).float().to(w.dtype)
    q = torch.clamp(torch.round(w / s), -31, 31) * s
    return w + (q - w).detach()


def _row_percentiles(absw: Tensor, percentiles: tuple[float, ...]) -> Tensor:
    """Linear-interpolated percentiles of each row of |w|: [len(percentiles), rows]."""
    srt = absw.sort(dim=1).values
    n = srt.size(1)
    out = []
    for p in percentiles:
        pos = (n - 1) * p / 100.0
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        out.append(srt[:, lo] * (1.0 - frac) + srt[:, hi] * frac)
    return torch.stack(out)


def quantize_rows(w: Tensor, qmax: int, clip_floor: float = DEFAULT_CLIP_FLOOR) -> tuple[Tensor, Tensor]:
    """Quantise a 2-D tensor per row with the GPTQ-lite clip search and the clip floor.

    s = fp16(max(c, clip_floor) / qmax) for each candidate clip c (module docstring).
    Returns (q int8 [rows, cols] in [-qmax, qmax], s fp16 [rows]); w ≈ q·s, and
    |q·s - w| <= s/2 wherever |w| <= qmax·s.
    """
    w = w.detach().float()
    clips = _row_percentiles(w.abs(), CLIP_PERCENTILES)  # [P, rows]
    best_q = torch.zeros_like(w, dtype=torch.int8)
    best_s = torch.ones(w.size(0), dtype=torch.float16, device=w.device)
    best_err = torch.full((w.size(0),), float("inf"), device=w.device)
    for clip in clips:
        s16 = (clip.clamp_min(clip_floor) / qmax).clamp_min(1e-7).to(torch.float16)
        s = s16.float().unsqueeze(1)
        q = torch.clamp(torch.round(w / s), -qmax, qmax)
        err = ((q * s - w) ** 2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_q[better] = q[better].to(torch.int8)
        best_s[better] = s16[better]
    return best_q, best_s


def quantize_state_dict(sd: dict[str, Tensor], clip_floor: float = DEFAULT_CLIP_FLOOR,
                        control_dtype: str = DEFAULT_CONTROL_DTYPE) -> dict[str, dict]:
    """Map each tensor to {"kind": "int6"|"int8"|"fp16"|"fp32"|"raw", "q"/"t", "s", "dtype"}.

    ``clip_floor`` is F of the module docstring, for int6 and int8 alike; ``control_dtype``
    ("fp16" or "fp32") is how control tensors are kept. fp16 rounds each to 11 significant
    bits (relative error <= 2^-11), far below the int6 error of the matrices they steer,
    and saves ~50 kB of the 16 MB budget on the default model.
    """
    if control_dtype not in ("fp16", "fp32"):
        raise ValueError(f"control_dtype must be fp16 or fp32, got {control_dtype!r}")
    out: dict[str, dict] = {}
    for name, t in sd.items():
        t = t.detach()  # quantise where it lives (GPU at the end of training), store on CPU
        entry: dict = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        if not t.is_floating_point():
            entry.update(kind="raw", t=t.cpu().contiguous())
        elif is_control_tensor(name, t):
            kept = t.half() if control_dtype == "fp16" else t.float()
            entry.update(kind=control_dtype, t=kept.cpu().contiguous())
        elif t.numel() > QUANT_SMALL_NUMEL:
            kind, qmax = ("int8", 127) if "tok_emb" in name else ("int6", 31)
            q, s = quantize_rows(t.reshape(t.size(0), -1), qmax, clip_floor)
            entry.update(kind=kind, q=q.cpu(), s=s.cpu())
        else:
            entry.update(kind="fp16", t=t.half().cpu().contiguous())
        out[name] = entry
    return out


def dequantize(obj: dict[str, dict]) -> dict[str, Tensor]:
    """Inverse of quantize_state_dict (up to rounding): a state dict in the original dtypes."""
    sd: dict[str, Tensor] = {}
    for name, e in obj.items():
        dtype = getattr(torch, e["dtype"])
        if e["kind"] in ("int6", "int8"):
            t = e["q"].float() * e["s"].float().unsqueeze(1)
        else:
            t = e["t"]
        sd[name] = t.reshape(e["shape"]).to(dtype)
    return sd


def _tensor_bytes(t: Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


ARTIFACT_CODECS = ("lzma", "zstd")
XZ_MAGIC = b"\xfd7zXZ\x00"


def pack_artifact(obj: dict[str, dict], level: int = 22, codec: str = "lzma") -> bytes:
    """Serialise to MAGIC + u32 header length + JSON header + raw tensor bytes; compress.

    A compact custom layout instead of torch.save: no pickle, no zip padding, and
    the bytes depend only on the tensors (deterministic across runs). ``codec``:
    "lzma" (xz container, preset 6; ``level`` unused) or "zstd" at ``level``. On a
    600-step model lzma-6 came out 85 kB (0.9%) smaller than zstd-22
    (bench/results/artifact_gap.md); unpack_artifact reads either.
    """
    if codec not in ARTIFACT_CODECS:
        raise ValueError(f"unknown artifact codec {codec!r} (expected one of {', '.join(ARTIFACT_CODECS)})")
    header = []
    chunks = []
    for name, e in obj.items():
        parts = {k: e[k] for k in ("q", "s", "t") if k in e}
        header.append({"name": name, "kind": e["kind"], "dtype": e["dtype"], "shape": e["shape"],
                       "parts": [[k, str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in parts.items()]})
        chunks.extend(_tensor_bytes(v) for v in parts.values())
    head = json.dumps(header, separators=(",", ":")).encode()
    raw = ARTIFACT_MAGIC + len(head).to_bytes(4, "little") + head + b"".join(chunks)
    if codec == "lzma":
        return lzma.compress(raw, format=lzma.FORMAT_XZ, preset=6)
    import zstandard  # only for ARTIFACT_CODEC=zstd: GPU images may lack it, lzma is in the stdlib

    return zstandard.ZstdCompressor(level=level).compress(raw)


def unpack_artifact(blob: bytes) -> dict[str, dict]:
    """Inverse of pack_artifact (either codec, told apart by the container's magic bytes)."""
    if blob.startswith(XZ_MAGIC):
        raw = lzma.decompress(blob)
    else:
        import zstandard

        raw = zstandard.ZstdDecompressor().decompress(blob)
    if not raw.startswith(ARTIFACT_MAGIC):
        raise ValueError("not a caddie artifact (bad magic)")
    n = int.from_bytes(raw[len(ARTIFACT_MAGIC):len(ARTIFACT_MAGIC) + 4], "little")
    pos = len(ARTIFACT_MAGIC) + 4
    header = json.loads(raw[pos:pos + n])
    buf = io.BytesIO(raw[pos + n:])
    obj: dict[str, dict] = {}
    for h in header:
        e = {"kind": h["kind"], "dtype": h["dtype"], "shape": h["shape"]}
        for key, dtype, shape in h["parts"]:
            dt = getattr(torch, dtype)
            count = int(np.prod(shape)) if shape else 1
            data = bytearray(buf.read(count * dt.itemsize))
            e[key] = torch.frombuffer(data, dtype=torch.uint8).view(dt).reshape(shape) if count else torch.empty(shape, dtype=dt)
        obj[h["name"]] = e
    return obj
