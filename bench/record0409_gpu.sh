#!/bin/bash
# The 2026-04-09 record through `caddie up` on the device tool's one GPU (bench/results/record_local_gpu.md).
# Call with `carry: [".gl/bin", ".gl/lib", ".gl/b"]`; `.gl/cc` (the teams' compile caches) is not carried, so a
# second call on the same warm machine compiles from what the first left there. $1: the output folder's name;
# EXTRA_ENV: more of the record's own settings, space-separated NAME=VALUE (e.g. SLIDING_WINDOW_ENABLED=0, which
# skips its ~48 s sliding-window evaluation when one cold call must reach the end: its score is then the quantised line).
# FlashAttention 3 is the stand-in's wheel in the run's environment (.gl/b/whl), not a file beside the script: caddie
# then counts the script's code as the challenge does (train_gpt.py alone; an imported library is free).
set -euo pipefail
export PATH=$PWD/.gl/bin:$PATH LD_LIBRARY_PATH=$PWD/.gl/lib PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gl/b/svcwhl/*.whl 2>&1 | tail -2
printf "$PWD\n/tmp/site\n" > "$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/caddie_dev.pth"
export CADDIE_ENV_WHEELS=$PWD/.gl/b/whl CADDIE_ENV_OFFLINE=1
extra=(); for kv in ${EXTRA_ENV:-}; do extra+=(--env "$kv"); done
gpu=$(nvidia-smi -L | head -1); case "$gpu" in *H200*) hw=H200:1 ;; *) hw=H100:1 ;; esac
echo "$gpu -> $hw; compile cache before: $(du -sh .gl/cc 2>/dev/null || echo none)"
python3 bench/record_local_gpu.py --record .gl/b/rec0409 --data-root .gl/b/data --data sp8192 \
  --hardware "$hw" --environment '{"packages": ["brotli", "fa3-standin"], "node_packages": true}' --env ITERATIONS=150 --env TRAIN_LOG_EVERY=10 \
  --env QK_GAIN_INIT=5.25 --env TTT_ENABLED=0 --env GPTQ_CALIBRATION_BATCHES=16 --timeout "${TIMEOUT:-565}" "${extra[@]}" \
  --compile-cache .gl/cc --out "$OUT/${1:-rec0409}"
echo "compile cache after: $(du -sh .gl/cc; find .gl/cc -type f | wc -l) files"
