"""caddie's trainer as ``python -m trainer`` runs it, plus the float weights saved beside
the artifact (``final_model.pt``), so bench/artifact_anatomy.py can quantise the trained
weights under several schemes. Bench-only: the trainer itself never writes them.

``BENCH_PREQUANT_ONLY=1`` stops the run there, after training and its pre-quantisation
evaluation, as the 2026-04-27 record's ``PREQUANT_ONLY=1`` does (timing runs skip the
minutes of GPTQ and compression)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trainer.train as train_module  # noqa: E402
from trainer.__main__ import main  # noqa: E402

_quantize = train_module.quantize_state_dict


def _quantize_and_keep(sd, *args, **kwargs):
    out_dir = Path(train_module.TrainerConfig.from_env().output_dir)
    torch.save({k: v.detach().cpu() for k, v in sd.items()}, out_dir / "final_model.pt")
    if os.environ.get("BENCH_PREQUANT_ONLY") == "1":
        print("BENCH_PREQUANT_ONLY=1: stopping before quantisation", flush=True)
        os._exit(0)
    return _quantize(sd, *args, **kwargs)


train_module.quantize_state_dict = _quantize_and_keep

if __name__ == "__main__":
    sys.exit(main())
