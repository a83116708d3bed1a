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


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/challenge"))
