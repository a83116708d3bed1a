"""caddie's trainer as ``python -m trainer`` runs it, plus the float weights saved beside
the artifact (``final_model.pt``), so bench/artifact_anatomy.py can quantise the trained
weights under several schemes. Bench-only: the trainer itself never writes them."""

from __future__ import annotations

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
    return _quantize(sd, *args, **kwargs)


train_module.quantize_state_dict = _quantize_and_keep

if __name__ == "__main__":
    sys.exit(main())
