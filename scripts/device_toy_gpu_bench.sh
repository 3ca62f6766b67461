#!/usr/bin/env bash
# scripts/toy_gpu_bench.py on the GPU machine the device tool lends (issue 17, part 2), in one call.
#
#   bash scripts/device_toy_gpu_bench.sh wheels        # here, once: what that machine's image lacks, into .whl/
#   bash scripts/device_toy_gpu_bench.sh run [FLAGS]   # there: the device tool's `run` with carry [".whl"]
#
# That machine (Python 3.12, torch, transformers, accelerate, peft, safetensors, einops; no registry) lacks diffusers
# and its importlib_metadata: `wheels` downloads them at the versions this checkout's .venv runs, into .whl/ (git
# ignores it). `run` installs them into /tmp/site, runs the bench from the checkout as it is (the pack is not
# installed there) with a time limit (TIME_LIMIT seconds, 480 by default: the tool stops a command at 600), FLAGS
# passed on (e.g. --pretrain-steps 2000 --jobs 16), and copies what the tool brings back (8 files at most, two
# folders down) to $OUT (without one, to a new out/device_XXXXXX): the printed log, summary.md and summary.json.
# The run's every bench folder stays in /tmp/gpu_bench.XXXXXX on that machine, which is given back after the call.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
wheels)
    py=${PYTHON:-.venv/bin/python}
    versions=$("$py" -c 'import importlib.metadata as m; print(m.version("diffusers"), m.version("importlib_metadata"))')
    read -r diffusers importlib_metadata <<<"$versions"
    rm -rf .whl
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
        "diffusers==$diffusers" "importlib_metadata==$importlib_metadata"
    ls .whl
    ;;
run)
    shift
    if [ -n "${OUT:-}" ]; then out=$OUT; else mkdir -p out && out=$(mktemp -d out/device_XXXXXX); fi  # never over a run
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    work=$(mktemp -d /tmp/gpu_bench.XXXXXX)
    status=0
    PYTHONUNBUFFERED=1 python3 scripts/toy_gpu_bench.py --out "$work" --time-limit "${TIME_LIMIT:-480}" "$@" 2>&1 \
        | tee "$out/log.txt" || status=$?
    cp "$work/summary.md" "$work/summary.json" "$out/" 2>/dev/null || true
    exit "$status"
    ;;
*)
    echo "usage: bash scripts/device_toy_gpu_bench.sh wheels | run [toy_gpu_bench.py flags]" >&2
    exit 2
    ;;
esac
