#!/usr/bin/env bash
# scripts/toy_gpu_bench.py on the GPU machine the device tool lends (issue 17, part 2), in one call.
#
#   bash scripts/device_toy_gpu_bench.sh wheels        # here, once: what that machine's image lacks, into .whl/
#   bash scripts/device_toy_gpu_bench.sh run [FLAGS]   # there: the device tool's `run` with carry [".whl"]
#   bash scripts/device_toy_gpu_bench.sh check [FLAGS] # there: scripts/device_check.py instead (real models' speed)
#
# That machine (Python 3.12, torch, transformers, accelerate, peft, safetensors, einops; no registry) lacks diffusers:
# `wheels` downloads it at the version this checkout's .venv runs, into .whl/ (git ignores it; diffusers imports
# importlib_metadata only on Python < 3.8). `run` installs it into /tmp/site, runs the bench from the checkout as it
# is (the pack is not installed there) with a time limit (TIME_LIMIT seconds, 480 by default: the tool stops a
# command at 600), FLAGS passed on (e.g. --pretrain-steps 2000 --jobs 16), and has it write what the tool brings back
# (8 files at most, 16 MiB each) into $OUT (without one, a new out/device_XXXXXX) as the run goes: the printed log;
# the base in 15 MiB parts once pretrained (`cat toy_base_large.safetensors.part* > toy_base_large.safetensors`);
# after every job summary.md, summary.json and results.tgz (each finished run's results.json, results.md, log.txt,
# grid.png), so a run cut short still returns what finished. Its LoRAs, checkpoints and the distilled base stay in
# /tmp/gpu_bench.XXXXXX on that machine, which is given back after the call.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
wheels)
    py=${PYTHON:-.venv/bin/python}
    diffusers=$("$py" -c 'import importlib.metadata as m; print(m.version("diffusers"))')
    rm -rf .whl
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "diffusers==$diffusers"
    ls .whl
    ;;
run | check)
    kind=$1
    shift
    if [ -n "${OUT:-}" ]; then out=$OUT; else mkdir -p out && out=$(mktemp -d out/device_XXXXXX); fi  # never over a run
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    if [ "$kind" = check ]; then  # scripts/device_check.py: the real models' speed, its JSON into $OUT after each row
        status=0
        PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 python3 scripts/device_check.py --out "$out" "$@" 2>&1 \
            | tee "$out/log.txt" || status=$?
        exit "$status"
    fi
    work=$(mktemp -d /tmp/gpu_bench.XXXXXX)
    status=0
    PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 python3 scripts/toy_gpu_bench.py --out "$work" --results-dir "$out" \
        --time-limit "${TIME_LIMIT:-480}" "$@" 2>&1 | tee "$out/log.txt" || status=$?
    exit "$status"
    ;;
*)
    echo "usage: bash scripts/device_toy_gpu_bench.sh wheels | run [toy_gpu_bench.py flags] | check [device_check.py flags]" >&2
    exit 2
    ;;
esac
