"""Where the artifact's bytes go, tensor by tensor, under several quantisation schemes (issue 9). Not a test.

For a state dict of float weights it quantises every tensor with

* ``caddie F=1``: caddie's quantiser (trainer/quant.py) with the clip floor on (the default);
* ``caddie F=0``: the same with the floor off (caddie before issue 9);
* ``reference``: the scheme the public record ``2026-03-23`` uses, re-implemented here
  for measurement only (its code stays in ../shared/reference): block matrices of the
  attention and MLP in int6 with ONE clip percentile per tensor (the candidate with the
  lowest mean squared error over the whole matrix), s = fp16(max(clip_row, 1)/31); other
  tensors over 65,536 values (embedding, BigramHash table) in int8 with per-row clip at the
  99.99984th percentile, s = max(clip, 1)/127; smaller tensors fp16;

and reports, per tensor group (layers folded together) and per scheme: raw bytes (one
byte per quantised value plus fp16 scales, as both artifacts store them), compressed
bytes of each tensor alone and of the whole blob (zstd-22 and lzma preset 6), and the
histogram of the quantised values: the share of q = 0, |q| = 1, |q| = 2, |q| >= 3, and
the empirical entropy H = -sum p(q) log2 p(q) in bits per value (what an ideal coder of
independent values would pay).

It also reads finished artifacts: caddie's ``model.int6.ptz`` (--caddie-artifact) and
the reference's ``final_model.int6.ptz`` (--ref-artifact), whose stored values it
histograms the same way.

Usage:
    python bench/artifact_anatomy.py --init                        # caddie's default model at init (CPU)
    python bench/artifact_anatomy.py --state final_model.pt        # trained float weights (either trainer's)
    python bench/artifact_anatomy.py --ref-artifact final_model.int6.ptz --caddie-artifact model.int6.ptz
"""

from __future__ import annotations

import argparse
import io
import lzma
import re
import sys
import time
from pathlib import Path

import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.quant import QUANT_SMALL_NUMEL, quantize_state_dict  # noqa: E402

REF_INT6_PERCENTILES = (0.9990, 0.9995, 0.9999, 0.99999, 1.0)
REF_INT8_ROW_QUANTILE = 0.9999984


# --- the reference's scheme, in our own words (measurement only) -------------------------


def ref_category(name: str) -> str:
    if "tok_emb" in name or "lm_head" in name:
        return "embed"
    if ".mlp." in name:
        return "mlp"
    if ".attn." in name:
        return "attn"
    return "other"


def _row_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    return a.amax(dim=1) if q >= 1.0 else torch.quantile(a, q, dim=1)


def ref_int6(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int6 per row, one percentile for the whole tensor, scale floored at 1/31."""
    best = None
    for pct in REF_INT6_PERCENTILES:
        s = (_row_quantile(w.abs(), pct) / 31).clamp_min(1 / 31).half()
        q = torch.clamp(torch.round(w / s.float()[:, None]), -31, 31)
        err = (q * s.float()[:, None] - w).pow(2).mean().item()
        if best is None or err < best[0]:
            best = (err, q.to(torch.int8), s)
    return best[1], best[2]


def ref_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 per row, clip at a high row quantile, scale floored at 1/127."""
    clip = _row_quantile(w.abs(), REF_INT8_ROW_QUANTILE)
    s = (clip / 127).clamp_min(1 / 127)
    q = torch.clamp(torch.round(w.clamp(-clip[:, None], clip[:, None]) / s[:, None]), -127, 127)
    return q.to(torch.int8), s.half()


def ref_quantize(sd: dict[str, torch.Tensor]) -> dict[str, dict]:
    out = {}
    for name, t in sd.items():
        t = t.detach().float().cpu()
        if t.numel() <= QUANT_SMALL_NUMEL:
            out[name] = {"kind": "fp16", "t": t.half()}
        elif any(p in name for p in ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight", "smear", "ve_scale")):
            out[name] = {"kind": "fp32", "t": t}
        elif ref_category(name) in ("attn", "mlp"):
            q, s = ref_int6(t.reshape(t.size(0), -1))
            out[name] = {"kind": "int6", "q": q, "s": s}
        else:
            q, s = ref_int8(t.reshape(t.size(0), -1))
            out[name] = {"kind": "int8", "q": q, "s": s}
    return out


# --- inputs ---------------------------------------------------------------------------


def unbank(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference keeps block matrices in 3-D banks; give them caddie's per-layer names."""
    if "qo_bank" not in sd:
        return sd
    n = sd["mlp_up_bank"].size(0)
    out = {k: v for k, v in sd.items() if not k.endswith("_bank")}
    for i in range(n):
        out[f"blocks.{i}.attn.c_q.weight"] = sd["qo_bank"][i]
        out[f"blocks.{i}.attn.proj.weight"] = sd["qo_bank"][n + i]
        out[f"blocks.{i}.attn.c_k.weight"] = sd["kv_bank"][i]
        out[f"blocks.{i}.attn.c_v.weight"] = sd["kv_bank"][n + i]
        out[f"blocks.{i}.mlp.up.weight"] = sd["mlp_up_bank"][i]
        out[f"blocks.{i}.mlp.down.weight"] = sd["mlp_down_bank"][i]
    return out


def init_state_dict(seed: int) -> dict[str, torch.Tensor]:
    from trainer.config import TrainerConfig
    from trainer.model import GPT

    torch.manual_seed(seed)
    return GPT(TrainerConfig()).state_dict()


def read_ref_artifact(path: str) -> dict[str, dict]:
    """The reference's lzma'd torch.save({"w": tensors, "m": meta}) as our entries."""
    obj = torch.load(io.BytesIO(lzma.decompress(Path(path).read_bytes())), map_location="cpu")
    w, meta = obj["w"], obj["m"]
    out = {}
    for name, info in meta.items():
        if isinstance(info, dict):
            out[name] = {"kind": info["type"], "q": w[name + ".q"], "s": w[name + ".scale"]}
        else:
            out[name] = {"kind": "fp16" if w[name].dtype == torch.float16 else "fp32", "t": w[name]}
    return unbank_entries(out)


def unbank_entries(obj: dict[str, dict]) -> dict[str, dict]:
    ren = {r"\.mlp\.fc\.": ".mlp.up.", r"\.mlp\.proj\.": ".mlp.down."}
    out = {}
    for k, v in obj.items():
        for a, b in ren.items():
            k = re.sub(a, b, k)
        out[k] = v
    return out


def read_caddie_artifact(path: str) -> dict[str, dict]:
    from trainer.quant import unpack_artifact

    return unpack_artifact(Path(path).read_bytes())


# --- measures -------------------------------------------------------------------------


def entry_bytes(e: dict) -> bytes:
    parts = [e[k] for k in ("q", "s", "t") if k in e]
    return b"".join(p.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for p in parts)


def histogram(q: torch.Tensor) -> dict[str, float]:
    a = q.reshape(-1).to(torch.int64)
    n = a.numel()
    vals, counts = torch.unique(a, return_counts=True)
    p = counts.double() / n
    aa = a.abs()
    return {"zero": (aa == 0).sum().item() / n, "one": (aa == 1).sum().item() / n, "two": (aa == 2).sum().item() / n,
            "ge3": (aa >= 3).sum().item() / n, "H": float(-(p * p.log2()).sum()), "levels": int(vals.numel())}


def group_name(name: str) -> str:
    return re.sub(r"blocks\.\d+\.", "blocks.*.", name)


def anatomy(obj: dict[str, dict], zstd_level: int, per_tensor_alone: bool) -> tuple[list[dict], dict]:
    """Rows per tensor group and whole-blob totals for one quantised state dict."""
    zc = zstandard.ZstdCompressor(level=zstd_level)
    groups: dict[str, dict] = {}
    blob = []
    for name, e in obj.items():
        raw = entry_bytes(e)
        blob.append(raw)
        g = groups.setdefault(group_name(name), {"group": group_name(name), "kind": e["kind"], "tensors": 0, "numel": 0, "raw": 0,
                                                 "zstd": 0, "lzma": 0, "q": []})
        g["tensors"] += 1
        g["numel"] += (e["q"] if "q" in e else e["t"]).numel()
        g["raw"] += len(raw)
        if per_tensor_alone:
            g["zstd"] += len(zc.compress(raw))
            g["lzma"] += len(lzma.compress(raw, preset=6))
        if "q" in e:
            g["q"].append(e["q"].reshape(-1))
    rows = []
    for g in groups.values():
        if g["q"]:
            g.update(histogram(torch.cat(g.pop("q"))))
        else:
            g.pop("q")
        rows.append(g)
    whole = b"".join(blob)
    totals = {"raw": len(whole), "zstd": len(zc.compress(whole)), "lzma": len(lzma.compress(whole, preset=6))}
    return rows, totals


def render(label: str, rows: list[dict], totals: dict, per_tensor_alone: bool) -> str:
    out = [f"### {label}", "",
           f"whole blob: raw {totals['raw']:,} bytes, zstd-22 {totals['zstd']:,}, lzma-6 {totals['lzma']:,}", "",
           "| tensors | kind | n | values | raw bytes | zstd alone | lzma alone | q=0 | abs(q)=1 | abs(q)=2 | abs(q)>=3 | levels | H bits/value |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = sorted(rows, key=lambda r: -r["raw"])
    for r in rows:
        hist = (f"{r['zero']:.3f} | {r['one']:.3f} | {r['two']:.3f} | {r['ge3']:.3f} | {r['levels']} | {r['H']:.2f}"
                if "H" in r else "— | — | — | — | — | —")
        alone = f"{r['zstd']:,} | {r['lzma']:,}" if per_tensor_alone else "— | —"
        out.append(f"| {r['group']} | {r['kind']} | {r['tensors']} | {r['numel']:,} | {r['raw']:,} | {alone} | {hist} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", action="store_true", help="caddie's default model at init")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--state", action="append", default=[], help="a float state dict saved with torch.save (banked or not)")
    ap.add_argument("--ref-artifact", action="append", default=[], help="the reference's final_model.int6.ptz")
    ap.add_argument("--caddie-artifact", action="append", default=[], help="caddie's model.int6.ptz")
    ap.add_argument("--schemes", default="caddie F=1,caddie F=0,reference")
    ap.add_argument("--zstd-level", type=int, default=22)
    ap.add_argument("--no-alone", action="store_true", help="skip compressing each tensor alone (faster)")
    ap.add_argument("--md", help="also write the report to this file")
    args = ap.parse_args()
    alone = not args.no_alone
    sections = []
    states = ([("caddie default model at init (seed %d)" % args.seed, init_state_dict(args.seed))] if args.init else [])
    states += [(p, unbank(torch.load(p, map_location="cpu"))) for p in args.state]
    for label, sd in states:
        sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        for scheme in args.schemes.split(","):
            t0 = time.perf_counter()
            if scheme == "reference":
                obj = ref_quantize(sd)
            else:
                obj = quantize_state_dict(sd, clip_floor=float(scheme.split("F=")[1]))
            rows, totals = anatomy(obj, args.zstd_level, alone)
            sections.append(render(f"{label}: {scheme}", rows, totals, alone) + f"\n\n({time.perf_counter() - t0:.0f} s)")
            print(sections[-1] + "\n", flush=True)
    for p in args.ref_artifact:
        rows, totals = anatomy(read_ref_artifact(p), args.zstd_level, alone)
        sections.append(render(f"{p} (the reference's own artifact: {Path(p).stat().st_size:,} bytes on disk)", rows, totals, alone))
        print(sections[-1] + "\n", flush=True)
    for p in args.caddie_artifact:
        rows, totals = anatomy(read_caddie_artifact(p), args.zstd_level, alone)
        sections.append(render(f"{p} (caddie's artifact: {Path(p).stat().st_size:,} bytes on disk)", rows, totals, alone))
        print(sections[-1] + "\n", flush=True)
    if args.md:
        Path(args.md).write_text("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
