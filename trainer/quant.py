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
import os
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from trainer.config import CONTROL_TENSOR_PATTERNS, QUANT_SMALL_NUMEL  # noqa: F401 (QUANT_SMALL_NUMEL: part of this module's story)
from trainer.gptq import gptq_quantize, lqer_correction, lqer_factors, lqer_pack, quantize_gate_rows

DEFAULT_CLIP_FLOOR = 1.0  # TrainerConfig.quant_clip_floor's default
DEFAULT_CONTROL_DTYPE = "fp16"  # TrainerConfig.control_dtype's default
CLIP_PERCENTILES = (99.90, 99.95, 99.99, 99.999, 100.0)
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


@dataclass
class FrontierQuant:
    """The 2026-04-27 record's quantiser options (trainer/gptq.py); the defaults are caddie's
    own quantiser: int6 matrices and int8 embedding by the per-row clip search, no LQER."""

    matrix_bits: int = 6
    embed_bits: int = 8
    hessians: dict[str, Tensor] | None = None  # GPTQ + SDClip when set (identity H where absent)
    clip_sigmas: dict[str, float] = field(default_factory=lambda: {"matrix": 12.85, "attn": 13.0, "mlp": 10.0, "embed": 20.0})
    gptq_block_size: int = 128
    gate_int8: bool = False
    lqer_top_k: int = 0  # 0: no LQER
    lqer_rank: int = 4
    lqer_asym: bool = True
    lqer_asym_group: int = 64
    lqer_factor_bits: int = 4

    @classmethod
    def from_config(cls, cfg, hessians: dict[str, Tensor] | None = None) -> "FrontierQuant":
        return cls(matrix_bits=cfg.matrix_bits, embed_bits=cfg.embed_bits, hessians=hessians if cfg.gptq else None,
                   clip_sigmas={"matrix": cfg.matrix_clip_sigmas, "attn": cfg.attn_clip_sigmas, "mlp": cfg.mlp_clip_sigmas,
                                "embed": cfg.embed_clip_sigmas},
                   gptq_block_size=cfg.gptq_block_size, gate_int8=cfg.attn_gate_int8,
                   lqer_top_k=cfg.lqer_top_k if cfg.lqer_enabled else 0, lqer_rank=cfg.lqer_rank, lqer_asym=cfg.lqer_asym,
                   lqer_asym_group=cfg.lqer_asym_group, lqer_factor_bits=cfg.lqer_factor_bits)

    def sigma_group(self, name: str) -> str:
        """Which *_CLIP_SIGMAS a tensor takes, by name (the record's rule)."""
        return "embed" if "tok_emb" in name else "mlp" if ".mlp." in name else "attn" if ".attn." in name else "matrix"


def is_gate_row_tensor(name: str, t: Tensor) -> bool:
    """The attention-gate weights ATTN_GATE_INT8 stores as int8 rows (sparse [heads, 12] or dense [heads, dim])."""
    return t.ndim == 2 and name.endswith(".attn_gate_w") and 32 <= t.numel() <= 8192


def quantize_state_dict(sd: dict[str, Tensor], clip_floor: float = DEFAULT_CLIP_FLOOR,
                        control_dtype: str = DEFAULT_CONTROL_DTYPE, frontier: FrontierQuant | None = None) -> dict[str, dict]:
    """Map each tensor to {"kind": "int<b>"|"fp16"|"fp32"|"raw", "q"/"t", "s", "dtype"}.

    ``clip_floor`` is F of the module docstring, for every per-row quantised tensor;
    ``control_dtype`` ("fp16" or "fp32") is how control tensors are kept. fp16 rounds each to
    11 significant bits (relative error <= 2^-11), far below the int6 error of the matrices
    they steer, and saves ~50 kB of the 16 MB budget on the default model. ``frontier``: bit
    widths, GPTQ, LQER and int8 gate rows (FrontierQuant; absent = caddie's own quantiser).
    """
    if control_dtype not in ("fp16", "fp32"):
        raise ValueError(f"control_dtype must be fp16 or fp32, got {control_dtype!r}")
    fq = frontier or FrontierQuant()
    out: dict[str, dict] = {}
    for name, t in sd.items():
        t = t.detach()  # quantise where it lives (GPU at the end of training), store on CPU
        entry: dict = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        if not t.is_floating_point():
            entry.update(kind="raw", t=t.cpu().contiguous())
        elif fq.gate_int8 and is_gate_row_tensor(name, t):
            q, s = quantize_gate_rows(t)
            entry.update(kind="int8", q=q, s=s)
        elif is_control_tensor(name, t):
            kept = t.half() if control_dtype == "fp16" else t.float()
            entry.update(kind=control_dtype, t=kept.cpu().contiguous())
        elif t.numel() > QUANT_SMALL_NUMEL:
            bits = fq.embed_bits if "tok_emb" in name else fq.matrix_bits
            qmax = 2 ** (bits - 1) - 1
            w = t.reshape(t.size(0), -1)
            if fq.hessians is not None:
                H = fq.hessians.get(name)
                H = torch.eye(w.size(1)) if H is None else H  # no input statistics (lookup tables): plain rounding
                q, s = gptq_quantize(w, H, fq.clip_sigmas[fq.sigma_group(name)], qmax, fq.gptq_block_size)
            else:
                q, s = quantize_rows(w, qmax, clip_floor)
            entry.update(kind=f"int{bits}", q=q.cpu(), s=s.cpu())
        else:
            entry.update(kind="fp16", t=t.half().cpu().contiguous())
        out[name] = entry
    if fq.lqer_top_k:
        add_lqer(sd, out, fq)
    return out


def add_lqer(sd: dict[str, Tensor], obj: dict[str, dict], fq: FrontierQuant) -> None:
    """LQER factors for the LQER_TOP_K quantised matrices of largest error |W - q·s| (trainer/gptq.py)."""
    errors = {}
    for name, e in obj.items():
        if not e["kind"].startswith("int") or (fq.gate_int8 and is_gate_row_tensor(name, sd[name])):
            continue
        err = sd[name].detach().float().cpu().reshape(e["q"].shape) - e["q"].float() * e["s"].float().view(-1, 1)
        errors[name] = (err, float(err.norm()))
    for name, (err, _) in sorted(errors.items(), key=lambda kv: -kv[1][1])[: fq.lqer_top_k]:
        A, B = lqer_factors(err, fq.lqer_rank)
        asym = fq.lqer_asym and B.numel() % fq.lqer_asym_group == 0
        obj[name].update(lqer_pack(A, B, asym=asym, group=fq.lqer_asym_group, bits=fq.lqer_factor_bits))


def dequantize(obj: dict[str, dict]) -> dict[str, Tensor]:
    """Inverse of quantize_state_dict (up to rounding): a state dict in the original dtypes."""
    sd: dict[str, Tensor] = {}
    for name, e in obj.items():
        dtype = getattr(torch, e["dtype"])
        if e["kind"].startswith("int"):
            t = e["q"].float() * e["s"].float().unsqueeze(1)
            if "la" in e:
                t = t + lqer_correction(e)
        else:
            t = e["t"]
        sd[name] = t.reshape(e["shape"]).to(dtype)
    return sd


def _tensor_bytes(t: Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


ARTIFACT_CODECS = ("lzma", "zstd", "brotli", "pergroup")
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ARTIFACT_MAGIC_SETTINGS = b"CADDIE2\n"  # header {"settings": {...}, "tensors": [...]}; CADDIE1 has the tensor list alone
PART_KEYS = ("q", "s", "t", "la", "las", "lb", "lbs")


def artifact_raw(obj: dict[str, dict], settings: dict | None = None, omit_q: frozenset[str] = frozenset()) -> bytes:
    """MAGIC + u32 header length + JSON header + raw tensor bytes, uncompressed.

    Without ``settings`` the layout is CADDIE1 (unchanged since issue 9); with them, CADDIE2
    carries the knobs the artifact needs to be loaded (config.artifact_settings). ``omit_q``:
    entries whose integers travel elsewhere (ARTIFACT_CODEC=pergroup), listed without "q".
    """
    tensors = []
    chunks = []
    for name, e in obj.items():
        parts = {k: e[k] for k in PART_KEYS if k in e and not (k == "q" and name in omit_q)}
        tensors.append({"name": name, "kind": e["kind"], "dtype": e["dtype"], "shape": e["shape"],
                        "parts": [[k, str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in parts.items()]})
        chunks.extend(_tensor_bytes(v) for v in parts.values())
    magic, header = (ARTIFACT_MAGIC, tensors) if settings is None else (ARTIFACT_MAGIC_SETTINGS, {"settings": settings, "tensors": tensors})
    head = json.dumps(header, separators=(",", ":")).encode()
    return magic + len(head).to_bytes(4, "little") + head + b"".join(chunks)


def parse_artifact_raw(raw: bytes) -> tuple[dict[str, dict], dict | None]:
    """Inverse of artifact_raw: (entries, settings or None)."""
    if not raw.startswith((ARTIFACT_MAGIC, ARTIFACT_MAGIC_SETTINGS)):
        raise ValueError("not a caddie artifact (bad magic)")
    n = int.from_bytes(raw[len(ARTIFACT_MAGIC):len(ARTIFACT_MAGIC) + 4], "little")
    pos = len(ARTIFACT_MAGIC) + 4
    header = json.loads(raw[pos:pos + n])
    settings = None
    if raw.startswith(ARTIFACT_MAGIC_SETTINGS):
        settings, header = header["settings"], header["tensors"]
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
    return obj, settings


def pack_artifact(obj: dict[str, dict], level: int = 22, codec: str = "lzma", settings: dict | None = None,
                  pergroup_backend: str = "brotli") -> bytes:
    """Serialise (artifact_raw) and compress.

    A compact custom layout instead of torch.save: no pickle, no zip padding, and
    the bytes depend only on the tensors (deterministic across runs). ``codec``:
    "lzma" (xz container, preset 6; ``level`` unused), "zstd" at ``level``, "brotli"
    (quality 11, as the records), or "pergroup" (pack_pergroup, its groups compressed by
    ``pergroup_backend``). On a 600-step model
    lzma-6 came out 85 kB (0.9%) smaller than zstd-22 (bench/results/artifact_gap.md);
    unpack_artifact reads every one.
    """
    if codec not in ARTIFACT_CODECS:
        raise ValueError(f"unknown artifact codec {codec!r} (expected one of {', '.join(ARTIFACT_CODECS)})")
    if codec == "pergroup":
        return pack_pergroup(obj, settings, pergroup_backend)
    raw = artifact_raw(obj, settings)
    if codec == "lzma":
        return lzma.compress(raw, format=lzma.FORMAT_XZ, preset=6)
    if codec == "brotli":
        import brotli  # only for the brotli codecs: GPU images may lack it, lzma is in the stdlib

        return brotli.compress(raw, quality=11)
    import zstandard  # only for ARTIFACT_CODEC=zstd: GPU images may lack it, lzma is in the stdlib

    return zstandard.ZstdCompressor(level=level).compress(raw)


def unpack_artifact_with_settings(blob: bytes) -> tuple[dict[str, dict], dict | None]:
    """Inverse of pack_artifact: (entries, settings or None); the codec is told apart by magic bytes
    (brotli has none: it is what is left)."""
    if blob.startswith(PERGROUP_MAGIC):
        return unpack_pergroup(blob)
    if blob.startswith(XZ_MAGIC):
        raw = lzma.decompress(blob)
    elif blob.startswith(ZSTD_MAGIC):
        import zstandard

        raw = zstandard.ZstdDecompressor().decompress(blob)
    else:
        import brotli

        raw = brotli.decompress(blob)
    return parse_artifact_raw(raw)


def unpack_artifact(blob: bytes) -> dict[str, dict]:
    """Inverse of pack_artifact (every codec), without the settings."""
    return unpack_artifact_with_settings(blob)[0]


# --- ARTIFACT_CODEC=pergroup: the 2026-04-27 record's per-group serialiser --------------------
# The int matrices are pooled by role across layers, so similarly distributed values sit
# together; the rows of the "hot" groups are ordered by a greedy L1 nearest-neighbour walk
# (adjacent rows numerically close), and each matrix is written transposed (column-major), so
# the coder sees long runs of small differences. Layout:
#   b"PGRP" + u32 stream count + u32 length per stream + the streams:
#   one per PERGROUP_ORDER group (PERGROUP_BACKEND: brotli-11 with a 16 MiB window, or lrzip -z -L 9,
#   ZPAQ, as the record; a system binary), the rest of the artifact (artifact_raw without the grouped integers,
#   brotli-11, 16 MiB window), and the row orders as uint16 (brotli-11).
PERGROUP_MAGIC = b"PGRP"
PERGROUP_ORDER = ("tok_emb.weight", "attn.c_k.weight", "attn.c_q.weight", "attn.c_v.weight", "attn.proj.weight",
                  "mlp.up.weight", "mlp.down.weight")
PERGROUP_SORTED = frozenset({"tok_emb.weight", "attn.c_q.weight", "mlp.up.weight"})


def pergroup_key(name: str) -> tuple[str, int] | None:
    """(group, layer) of a tensor the per-group serialiser pools, else None."""
    if name == "tok_emb.weight":
        return name, 0
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        key = ".".join(parts[2:])
        if key in PERGROUP_ORDER and key != "tok_emb.weight":
            return key, int(parts[1])
    return None


def similarity_order(m: np.ndarray) -> np.ndarray:
    """Greedy L1 walk over the rows: start at row 0, always go to the nearest row not yet taken
    (ties: the lowest index). Returns the row order as uint16."""
    rows = m.astype(np.float32)
    free = np.ones(len(rows), dtype=bool)
    free[0] = False
    order = [0]
    cur = rows[0]
    for _ in range(len(rows) - 1):
        idx = np.flatnonzero(free)
        nxt = idx[np.argmin(np.abs(rows[idx] - cur).sum(axis=1))]
        order.append(nxt)
        free[nxt] = False
        cur = rows[nxt]
    return np.array(order, dtype=np.uint16)


def _pergroup_members(obj: dict[str, dict], with_q: bool) -> dict[str, list[str]]:
    """Group -> names of its int matrices, by layer."""
    members: dict[str, list[tuple[int, str]]] = {}
    for name, e in obj.items():
        key = pergroup_key(name)
        if key and e["kind"].startswith("int") and (("q" in e and e["q"].dtype == torch.int8 and e["q"].ndim == 2) if with_q else "q" not in e):
            members.setdefault(key[0], []).append((key[1], name))
    return {g: [n for _, n in sorted(v)] for g, v in members.items()}


PERGROUP_BACKENDS = ("brotli", "lrzip")
LRZIP_MAGIC = b"LRZI"


def lrzip(data: bytes, decompress: bool = False) -> bytes:
    """lrzip -z -L 9 (ZPAQ context mixing; deterministic), or its inverse, through temporary files."""
    with tempfile.TemporaryDirectory(prefix="caddie_lrzip_") as tmp:
        src = os.path.join(tmp, "group.lrz" if decompress else "group.bin")
        dst = os.path.join(tmp, "group.out")
        with open(src, "wb") as f:
            f.write(data)
        cmd = ["lrzip", "-d", "-f", "-o", dst, src] if decompress else ["lrzip", "-z", "-L", "9", "-o", dst, src]
        try:
            subprocess.run(cmd, capture_output=True, check=True)
        except FileNotFoundError:
            raise RuntimeError("PERGROUP_BACKEND=lrzip needs the lrzip binary (apt-get install lrzip)") from None
        with open(dst, "rb") as f:
            return f.read()


def pack_pergroup(obj: dict[str, dict], settings: dict | None = None, backend: str = "brotli") -> bytes:
    """ARTIFACT_CODEC=pergroup (the layout above)."""
    import brotli

    if backend not in PERGROUP_BACKENDS:
        raise ValueError(f"unknown pergroup backend {backend!r} (expected one of {', '.join(PERGROUP_BACKENDS)})")
    squeeze = lrzip if backend == "lrzip" else (lambda data: brotli.compress(data, quality=11, lgwin=24))

    members = _pergroup_members(obj, with_q=True)
    if any(obj[n]["q"].size(0) > 65536 for names in members.values() for n in names):
        raise ValueError("ARTIFACT_CODEC=pergroup stores row orders as uint16: a pooled matrix has more than 65,536 rows")
    streams, perms = [], []
    for group in PERGROUP_ORDER:
        blob = []
        for name in members.get(group, []):
            arr = obj[name]["q"].numpy()
            if group in PERGROUP_SORTED:
                order = similarity_order(arr)
                perms.append(order.tobytes())
                arr = arr[order]
            blob.append(np.ascontiguousarray(arr.T).tobytes())
        streams.append(squeeze(b"".join(blob)) if blob else b"")
    grouped = frozenset(n for names in members.values() for n in names)
    streams.append(brotli.compress(artifact_raw(obj, settings, omit_q=grouped), quality=11, lgwin=24))
    streams.append(brotli.compress(b"".join(perms), quality=11) if perms else b"")
    head = PERGROUP_MAGIC + len(streams).to_bytes(4, "little") + b"".join(len(s).to_bytes(4, "little") for s in streams)
    return head + b"".join(streams)


def unpack_pergroup(blob: bytes) -> tuple[dict[str, dict], dict | None]:
    """Inverse of pack_pergroup: (entries, settings or None)."""
    import brotli

    n = int.from_bytes(blob[4:8], "little")
    lengths = [int.from_bytes(blob[8 + 4 * i:12 + 4 * i], "little") for i in range(n)]
    streams, pos = [], 8 + 4 * n
    for length in lengths:
        streams.append(blob[pos:pos + length])
        pos += length
    obj, settings = parse_artifact_raw(brotli.decompress(streams[len(PERGROUP_ORDER)]))
    perms = np.frombuffer(brotli.decompress(streams[-1]), dtype=np.uint16) if streams[-1] else np.zeros(0, np.uint16)
    members = _pergroup_members(obj, with_q=False)
    used = 0
    for group, stream in zip(PERGROUP_ORDER, streams):
        raw = (lrzip(stream, decompress=True) if stream.startswith(LRZIP_MAGIC) else brotli.decompress(stream)) if stream else b""
        data = np.frombuffer(raw, dtype=np.int8)
        pos = 0
        for name in members.get(group, []):
            e = obj[name]
            rows = e["shape"][0]
            cols = int(np.prod(e["shape"][1:]))
            arr = data[pos:pos + rows * cols].reshape(cols, rows).T
            pos += rows * cols
            if group in PERGROUP_SORTED:
                order = perms[used:used + rows].astype(np.int64)
                used += rows
                unsorted = np.empty_like(arr)
                unsorted[order] = arr
                arr = unsorted
            e["q"] = torch.from_numpy(np.ascontiguousarray(arr))
    return obj, settings
