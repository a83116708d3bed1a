"""A stand-in train_gpt.py that replays a record's log with its timing (issue 20 item 7).

Submitted as a team's own script with the record's log as its file ``replay.log``, it runs
where a script runs (the worker's local launcher, sealed) and prints that log line by line,
paced by the log's own clock, scaled down by REPLAY_SCALE (0.002: 600 s of training in 1.2 s):
a line with ``train_time`` is printed when that much (scaled) training time has passed since
its first one, a line with ``eval_time`` after that much (scaled) evaluation time.

Like a record it reads its data at setup (a validation shard, when the variant has one, as
every record loads its validation tokens before training) and writes its compressed model:
``final_model.int6.ptz`` of the size that makes caddie's count of this file plus the model
equal the log's ``Total submission size`` (or ``budget:N/...``) (caddie counts code compressed where the log says
so, as service/runs/bytes_check.py does), so the artifact caddie counts from the files is the
record's own.
"""

import base64
import glob
import lzma
import os
import re
import time

SCALE = float(os.environ.get("REPLAY_SCALE", "0.002"))
LOG = os.environ.get("REPLAY_LOG", "replay.log")
TRAIN_MS = re.compile(r"\btrain_time:\s*(\d+(?:\.\d+)?)(ms|s|m)\b")
EVAL_MS = re.compile(r"\beval_time:\s*(\d+(?:\.\d+)?)(ms|s)\b")
TOTAL = re.compile(r"^Total submission size(?: [^:]+)?: (\d+) bytes\s*$|^budget:(\d+)/\d+\b")  # the latter: 2026-03-24's ternary
PER = {"ms": 1.0, "s": 1000.0, "m": 60000.0}


def own_code_bytes(compressed: bool) -> int:
    code = open(__file__, "rb").read()
    if not compressed:
        return len(code)
    packed = base64.b85encode(lzma.compress(code, preset=9 | lzma.PRESET_EXTREME))
    return len(b'import lzma as L,base64 as b\nexec(L.decompress(b.b85decode("%s")))\n' % packed)


def main() -> None:
    lines = open(LOG, encoding="utf-8", errors="replace").read().splitlines()
    for shard in sorted(glob.glob(os.path.join(os.environ.get("DATA_PATH", "./data"), "fineweb_val_*.bin")))[:1]:
        open(shard, "rb").read(1024)  # setup: the records load their validation tokens here
    compressed = any(line.startswith("Code size (compressed)") for line in lines)
    start = time.monotonic()
    for line in lines:
        if m := TRAIN_MS.search(line):
            due = start + float(m[1]) * PER[m[2]] / 1000.0 * SCALE
            time.sleep(max(0.0, due - time.monotonic()))
        elif m := EVAL_MS.search(line):
            time.sleep(float(m[1]) * PER[m[2]] / 1000.0 * SCALE)
            start = time.monotonic()  # a later training-time line (rare) counts from here
        if m := TOTAL.match(line.strip()):
            size = int(m[1] or m[2]) - own_code_bytes(compressed)
            with open("final_model.int6.ptz", "wb") as f:
                f.truncate(max(0, size))
        print(line, flush=True)


if __name__ == "__main__":
    main()
