#!/bin/bash
# Builds .gl/, what a device-tool call carries to a GPU machine that has no network (run here, once per
# machine; `carry: [".gl"]`, at most 64 MiB a call). The GPU image has python3.12 with torch, numpy,
# scipy and sentencepiece; everything else travels:
#   .gl/bin, .gl/lib   bubblewrap (the sandbox) and lrzip (the 2026-04-27 record's compressor), with their libraries
#   .gl/whl            brotli and zstandard (the trainer's codecs)
#   .gl/svcwhl         the service and worker packages (`caddie up` on the GPU machine: bench/record_local_gpu.py)
#   .gl/smoke          the offline smoke corpus, 8192 vocabulary (timing runs of the default stack)
#   .gl/bench8192      the 8192-vocabulary bench corpus of bench/vs_reference.py (FineWeb-length documents)
#   .gl/ref/rec0427    the 2026-04-27 record's folder, read from ../shared/challenge
#   .gl/ref/rec0409    the 2026-04-09 record's folder (no varlen attention: the one run through `caddie up` on an H100)
#   .gl/b              what the record's run in an environment of its own carries (bench/results/record_local_gpu.md, 52 MiB):
#                      svcwhl (the service's wheels less psycopg, plus uv), whl (brotli, the FA3 stand-in), data (2 train shards of
#                      .gl/bench8192 and its val shard), rec0409
# On the GPU machine, begin each command with:
#   export PATH=$PWD/.gl/bin:$PATH LD_LIBRARY_PATH=$PWD/.gl/lib PYTHONUNBUFFERED=1
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gl/whl/*.whl [.gl/svcwhl/*.whl] && export PYTHONPATH=/tmp/site
# and for `caddie up` there (bench/record_local_gpu.py), also: the codecs into the image's own Python (a sealed
# script job sees only it), and a .pth naming the checkout and /tmp/site (the job wrapper runs with the job's
# env, whose PYTHONPATH is the audit hook's folder: without it, "caddie's job wrapper failed: No module named 'worker'"):
#   python3 -m pip install -q --no-index --no-deps .gl/whl/*.whl
#   printf "$PWD\n/tmp/site\n" > "$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/caddie_dev.pth"
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
wheels() {  # DIR SPEC...: wheels for the image's CPython 3.12 on x86-64 Linux
  local dir=$1; shift
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d "$dir" "$@"
}
mkdir -p .gl/bin .gl/lib .gl/whl .gl/svcwhl .gl/ref
command -v bwrap >/dev/null && command -v lrzip >/dev/null || apt-get install -y bubblewrap lrzip
cp "$(command -v bwrap)" "$(command -v lrzip)" .gl/bin/
# their libraries, less the C library's own (the image's glibc is newer)
for b in bwrap lrzip; do ldd "$(command -v $b)"; done | awk '/=>/{print $3}' | sort -u \
  | grep -v -E 'libc\.so|libm\.so|ld-linux|libstdc|libgcc_s|libz\.so|libpthread' | xargs -I{} cp -L {} .gl/lib/
wheels .gl/whl --no-deps brotli zstandard
# the service's packages with their needs; numpy is the image's, boto3 is imported only for an S3 store
wheels .gl/svcwhl fastapi uvicorn sqlalchemy alembic pydantic pydantic-settings typer httpx rich pyyaml jinja2 \
  python-multipart starlette anyio markupsafe plotly optuna "celery[redis]" kombu redis psutil "psycopg[binary]"
rm -f .gl/svcwhl/numpy-*.whl
[ -d .gl/smoke ] || $py -m trainer.data smoke --out .gl/smoke --vocab-size 8192
[ -d .gl/bench8192 ] || $py bench/vs_reference.py corpus --out .gl/bench8192 --vocab-size 8192 --max-mb 30 --workers 2 --join-chars 4000
rm -rf .gl/ref/rec0427 && cp -r ../shared/challenge/records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611 .gl/ref/rec0427
rm -rf .gl/ref/rec0409 && cp -r ../shared/challenge/records/track_10min_16mb/2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT .gl/ref/rec0409
rm -rf .gl/b && mkdir -p .gl/b/svcwhl .gl/b/whl .gl/b/data/datasets/fineweb10B_sp8192
cp .gl/svcwhl/*.whl .gl/b/svcwhl/ && rm -f .gl/b/svcwhl/psycopg*
wheels .gl/b/svcwhl --no-deps uv
cp .gl/whl/brotli-*.whl .gl/b/whl/
# the FlashAttention 3 stand-in as a wheel, a package of the run's environment (bench/fa3_standin/pyproject.toml);
# built from a copy: setuptools leaves build/ and *.egg-info beside its sources
fa3=$(mktemp -d) && cp bench/fa3_standin/pyproject.toml bench/fa3_standin/flash_attn_interface.py "$fa3"/ && python3 -m pip wheel -q --no-deps "$fa3" -w .gl/b/whl && rm -rf "$fa3"
cp .gl/bench8192/datasets/fineweb10B_sp8192/fineweb_train_00000[01].bin .gl/bench8192/datasets/fineweb10B_sp8192/fineweb_val_000000.bin \
  .gl/b/data/datasets/fineweb10B_sp8192/
cp -r .gl/bench8192/tokenizers .gl/b/data/ && cp -r .gl/ref/rec0409 .gl/b/rec0409
du -sh .gl .gl/*
