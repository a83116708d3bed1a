"""caddie's rules over every accepted record log of the challenge: writes bench/results/records_verdicts.md.

    .venv/bin/python bench/records_verdicts.py ../shared/challenge > bench/results/records_verdicts.md

One row per seed log: the figures the rules judge (artifact bytes, training time and whether
the cap stopped it, scored evaluation time and the diagnostics not counted, the GPUs), caddie's
verdict and the challenge's (every folder here was accepted: "accepted").
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.results.public_records import check_record_log, is_record_log, log_run_facts, read_record, record_folders  # noqa: E402
from service.results.rules import Verdict, overall  # noqa: E402

# Where caddie's verdict is not the challenge's acceptance, and why (facts from the folders).
WHY = """
## Where caddie does not pass what the challenge accepted, and why

- **2026-04-06_SP8192_HessianSDClip_ProgressiveRecurrence (fail, 4 logs).** Every log prints `Total submission size
  quantized+brotli` of 16,054,963-16,059,704 bytes: the compressed model (15,976,275-15,979,649) plus `Code size` of
  78,688-80,055 bytes. The README's and submission.json's "artifact" figures are the model alone, so the total was never
  stated and the record went in over the limit; the folder's `train_gpt.py` is a 74-byte loader of `train_gpt_decode.py`
  (80,055 bytes), which counts as code too. caddie applies the rule as written: code plus compressed model.
- **2026-03-19_int6_STE QAT_ MLP_bigram _U_Net (fail).** The folder holds one `train.log` and nothing else (no README,
  submission.json or script). That log's `Total submission size int6+zstd-22` is 16,186,500 bytes, and with no script
  there is no code whose hash could be recorded.
- **2026-03-18_LowerLR, 2026-03-19_10L_MixedPrecision (not_comparable).** Their logs' nvidia-smi tables show 8x NVIDIA
  H200; the 600 s limits are judged on 8x H100 SXM, so caddie does not call them a pass or a fail.
- **Not judged (4 logs).** Logs a folder keeps beside the record's runs: an exploratory 2x H100 run (03-17 LoRA_TTT
  `train_v1.txt`) and 2026-04-23's TTT-only re-evaluations and their summary, which have no training to judge.
"""


def _f(x: object, fmt: str = "{}") -> str:
    return "" if x is None else fmt.format(x)


def main(root: Path) -> None:
    rows, tally = [], Counter()
    for folder in record_folders(root):
        record = read_record(folder)
        for log in record.logs:
            if not is_record_log(record, log):
                rows.append(f"| {record.folder} | {log.name} | | | | | | not judged: not a run of the submission | accepted |")
                tally["not judged"] += 1
                continue
            checks = check_record_log(record, log)
            facts = log_run_facts(record, log)
            verdict = overall(checks)
            tally[verdict.value] += 1
            why = "; ".join(f"{c.rule}: {c.reason}" for c in checks if c.verdict in (Verdict.FAIL, Verdict.NOT_COMPARABLE))
            cap = " (cap)" if log.stopped_by_cap else ""
            diag = f" (+{log.diagnostic_eval_seconds:.1f} diag.)" if log.diagnostic_eval_seconds else ""
            gpus = f"{facts.world_size}x {facts.gpu_name}" if facts.gpu_name else "not reported"
            rows.append(f"| {record.folder} | {log.name} | {_f(log.val_bpb, '{:.5f}')} | {_f(facts.artifact_bytes, '{:,}')} | "
                        f"{_f(log.train_seconds, '{:.3f}')}{cap} | {_f(log.eval_seconds, '{:.1f}')}{diag} | {gpus} | "
                        f"**{verdict.value}**{': ' + why.replace('|', '/') if why else ''} | accepted |")
    print("# caddie's verdicts on the challenge's accepted records\n")
    print("Command: `.venv/bin/python bench/records_verdicts.py ../shared/challenge > bench/results/records_verdicts.md`")
    print("(the challenge's 46 record folders of track_10min_16mb at its final commit). The CI test")
    print("`tests/results/test_records_corpus.py` holds the same verdicts, each exception named with its figure.\n")
    print("Verified from the folder: artifact bytes, training time (a run stopped by its own cap passes up to")
    print("600.2 s: the challenge accepted up to 600.137 s), the scored evaluation's time (the log's")
    print("`total_eval_time` where printed; diagnostics shown, not counted), the GPUs (the log's nvidia-smi table,")
    print("else its launcher's line, else the record's README), the hash of the folder's script. Declared by the")
    print("record, not verified (a log cannot show them): full validation, the TTT protocol, no validation data in training.\n")
    print("Tally: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())) + "\n")
    print("| record | log | val_bpb | artifact bytes | train s | scored eval s | GPUs | caddie | challenge |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(WHY)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/challenge"))
