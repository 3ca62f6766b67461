#!/usr/bin/env python3
"""Device check for FLUX.1-dev on one GPU (issue 14): `byg bench speed` on full-size FLUX.1-dev from the shipped
config with random weights (nothing is downloaded), batch 1, rank 64, at 512 and 1024 px, with bf16 and with
fp8-stored weights: supervised and ByG step time, their ratio, FLOP ratio, peak memory, 20-step edit time.

    python scripts/device_check.py                       # on CUDA; under 8 minutes on one H100/H200-class GPU
    python scripts/device_check.py --tiny --device cpu   # the same code on a small FLUX config (what the tests run)

Writes every configuration's figures to OUT/device_check.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byg_core.speed import run_speed  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides in px (default 512 1024)")
    parser.add_argument("--storage", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per method, interleaved")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="FLUX's architecture 128 wide, 2 + 2 blocks (CPU tests)")
    parser.add_argument("--out", type=Path, default=Path("out/device_check"))
    args = parser.parse_args(argv)
    model = "flux-128" if args.tiny else "flux1-dev"
    rows = []
    for size in args.sizes or ([64] if args.tiny else [512, 1024]):
        for storage in args.storage:
            rows.append(run_speed(model, size, 1, args.device, args.repeats, args.rank, storage,
                                  args.out / f"{size}_{storage}"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
