#!/usr/bin/env python3
"""Device check on one GPU (issues 14 and 15): `byg bench speed` on full-size models built from the shipped configs
with random weights (nothing is downloaded), batch 1, rank 64: FLUX.1-dev at 512 and 1024 px, and Wan2.2 TI2V-5B
and one T2V-A14B expert at 320x576, 17 frames (paper B.2's training size), each with bf16 and with fp8-stored
weights: supervised and ByG step time, their ratio, FLOP ratio, peak memory, 20-step edit time.

    python scripts/device_check.py                       # on CUDA; about 10 minutes on one H100/H200-class GPU
    python scripts/device_check.py --suite wan           # the Wan rows only
    python scripts/device_check.py --tiny --device cpu   # the same code on small configs (what the tests run)

Writes every configuration's figures to OUT/device_check.json (--out, $OUT by default where set), rewritten after
each, so a run stopped at the device tool's 600 s keeps the rows it finished; on the device tool's machine run it as
`bash scripts/device_toy_gpu_bench.sh check [FLAGS]` (with carry [".whl"]: it installs diffusers first), and size it
to the call: `--suite flux` and `--suite wan` as two calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byg_core.safefiles import write_text_atomic  # noqa: E402
from byg_core.speed import run_speed  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides in px (default 512 1024)")
    parser.add_argument("--storage", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per method, interleaved")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the architectures 128 wide, 2 blocks (CPU tests)")
    parser.add_argument("--suite", nargs="+", default=["flux", "wan"], choices=["flux", "wan"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/device_check")),
                        help="where device_check.json goes, rewritten after every row (default: $OUT, the device "
                             "tool's folder, where set)")
    parser.add_argument("--rows-out", type=Path, default=None,
                        help="each row's own speed.json (default: a new temporary folder: the device tool brings "
                             "back 8 files, and device_check.json holds every row)")
    args = parser.parse_args(argv)
    rows_out = args.rows_out or Path(tempfile.mkdtemp(prefix="device_check_rows."))
    rows = []

    def row(*speed_args, folder: str, **options) -> None:
        rows.append(run_speed(*speed_args, rows_out / folder, **options))
        write_text_atomic(args.out / "device_check.json", json.dumps(rows, indent=2))

    if "flux" in args.suite:
        model = "flux-128" if args.tiny else "flux1-dev"
        for size in args.sizes or ([64] if args.tiny else [512, 1024]):
            for storage in args.storage:
                row(model, size, 1, args.device, args.repeats, args.rank, storage, folder=f"{model}_{size}_{storage}")
    if "wan" in args.suite:
        height, width, frames = (64, 96, 5) if args.tiny else (320, 576, 17)
        for model in ["wan-128"] if args.tiny else ["wan2.2-ti2v-5b", "wan2.2-a14b-expert"]:
            for storage in args.storage:
                row(model, height, 1, args.device, args.repeats, args.rank, storage, folder=f"{model}_{storage}",
                    width=width, frames=frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
