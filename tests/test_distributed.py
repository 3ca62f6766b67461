"""Several processes train one LoRA: gradients are averaged (torchrun + accelerate, gloo on the CPU).

On GPUs the same code runs under ``accelerate launch --multi_gpu``; on a CPU accelerate
launches several processes only through MPI, so the test starts them with torchrun.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from byg_core.toy.dataset import write_toy_dataset

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_the_same_weights(tmp_path):
    write_toy_dataset(tmp_path / "data", n=8, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(WORKER), str(tmp_path / "data"), str(tmp_path / "run")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / "run" / f"rank{i}.safetensors") for i in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(v.abs().sum() > 0 for k, v in rank0.items() if "lora_B" in k)
    assert (tmp_path / "run" / "byg_lora.safetensors").is_file()
