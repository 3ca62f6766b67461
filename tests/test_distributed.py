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
from byg_core.toy.video import write_video_dataset

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args):
    """``args`` (a script and its arguments, or ``-m`` and a module's) under torchrun with two CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train_on_two_processes(data, run, model="toy", *more):
    """The worker on two processes; each rank's files (``<name>`` -> [rank 0's, rank 1's])."""
    torchrun(WORKER, data, run, model, *more)
    names = {path.name.removeprefix("rank0") for path in run.glob("rank0*.safetensors")}
    return {name: [load_file(run / f"rank{i}{name}") for i in (0, 1)] for name in names}


def test_two_processes_end_with_the_same_weights(tmp_path):
    write_toy_dataset(tmp_path / "data", n=8, seed=0)
    files = train_on_two_processes(tmp_path / "data", tmp_path / "run")
    rank0, rank1 = files[".safetensors"]
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(v.abs().sum() > 0 for k, v in rank0.items() if "lora_B" in k)
    losses = [f["loss"] for f in files["_losses.safetensors"]]
    assert not torch.equal(*losses)  # each rank trained on its own batches, so the same weights are the average's
    assert (tmp_path / "run" / "byg_lora.safetensors").is_file()


def test_a_stop_one_process_sees_stops_every_process_at_that_step(tmp_path):
    """Ctrl-C (or a host's cancel) may reach one process: alone it would leave the others in a gradient reduce."""
    write_toy_dataset(tmp_path / "data", n=8, seed=0)
    files = train_on_two_processes(tmp_path / "data", tmp_path / "run", "toy", 2)
    assert [int(f["steps"]) for f in files["_losses.safetensors"]] == [2, 2]
    rank0, rank1 = files[".safetensors"]
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert (tmp_path / "run" / "byg_lora_step2.safetensors").is_file()


def test_a_nan_loss_on_one_process_stops_every_process_as_diverged_at_that_step(tmp_path):
    """One process's batch overflowing gives a nan loss there alone and nan weights on every process (the average):
    the one that saw it alone stopping had left the others in the next collective (gloo: connection closed)."""
    write_toy_dataset(tmp_path / "data", n=8, seed=0)
    torchrun(WORKER, tmp_path / "data", tmp_path / "run", "toy", "-", "nan-on-rank1")
    assert [int(load_file(tmp_path / "run" / f"rank{i}_diverged.safetensors")["step"]) for i in (0, 1)] == [2, 2]


def test_each_expert_is_averaged_with_itself_when_the_ranks_train_different_experts(tmp_path):
    """Two-expert Wan: a rank whose t all fell on one expert has no gradient for the other; it counts as zero there,
    so each tensor is averaged with its own counterpart on the other rank, never with the other expert's."""
    write_video_dataset(tmp_path / "data", 4, seed=0)
    files = train_on_two_processes(tmp_path / "data", tmp_path / "run", "toy-wan-a14b")
    grads = files["_grads.safetensors"]
    touched = [{int(k.split(".")[1]) for k in g if k.startswith("local.")} for g in grads]
    assert touched[0] and touched[1] and touched[0] != touched[1]  # the case at hand: the ranks' experts differ
    for n in touched[0] | touched[1]:
        local = [g.get(f"local.{n}") for g in grads]
        want = sum(torch.zeros_like(next(x for x in local if x is not None)) if x is None else x for x in local) / 2
        for g in grads:
            torch.testing.assert_close(g[f"synced.{n}"], want, rtol=1e-6, atol=1e-9)
    assert all({int(k.split(".")[1]) for k in g if k.startswith("synced.")} == touched[0] | touched[1] for g in grads)
    rank0, rank1 = files[".safetensors"]
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)


def byg_train_on_two_processes(data, run, *settings, resume=False):
    """`byg train examples/toy.toml` as `accelerate launch --multi_gpu` runs it, on two CPU processes."""
    overrides = [f"data={data}", f"output_dir={run}", "rank=4", "batch_size=2", "warmup_identity_steps=1",
                 "objective.rollout_steps=2", *settings]
    return torchrun("-m", "byg_core.cli", "train", ROOT / "examples" / "toy.toml",
                    *[arg for pair in overrides for arg in ("--set", pair)], *(["--resume"] if resume else []))


def test_byg_train_on_two_processes_writes_one_text_cache_and_the_main_process_losses(tmp_path):
    """One process encodes the prompts into the disk text cache while the others wait and read it, and
    losses.jsonl is the main process's, the checkpoint's history."""
    import json

    from safetensors import safe_open

    write_toy_dataset(tmp_path / "data", n=8, seed=0)
    done = byg_train_on_two_processes(tmp_path / "data", tmp_path / "run", f"text_cache_dir={tmp_path / 'text'}",
                                      "steps=3")
    assert done.stdout.count("LoRA: ") == 1 and done.stdout.count("checkpoint: ") == 1  # the main process reports
    assert done.stderr.count(f"touch {tmp_path / 'run' / 'STOP'}") == 1  # the stop that outlives torchrun's 30 s
    (index,) = [json.loads(p.read_text()) for p in (tmp_path / "text").glob("index_*.json")]
    assert len(list((tmp_path / "text").glob("shard_*.safetensors"))) == 1  # written once, not once per process
    assert len(index["prompts"]) > 8 and {shard for shard, _ in index["prompts"].values()} == {
        p.name for p in (tmp_path / "text").glob("shard_*.safetensors")}
    with safe_open(str(tmp_path / "run" / "checkpoint.safetensors"), "pt") as handle:
        history = json.loads(handle.metadata()["byg.history"])
    written = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert written == history and len(written) == 3


def test_a_two_process_run_resumed_ends_where_the_uninterrupted_one_does(tmp_path):
    """Resuming restores every process's state from the main process's checkpoint: step, optimizer, each
    process's own batches (seeded by step and process), so the stop costs nothing."""
    write_toy_dataset(tmp_path / "data", n=8, seed=0)
    byg_train_on_two_processes(tmp_path / "data", tmp_path / "whole", "steps=4")
    byg_train_on_two_processes(tmp_path / "data", tmp_path / "stopped", "steps=2")
    done = byg_train_on_two_processes(tmp_path / "data", tmp_path / "stopped", "steps=4", resume=True)
    assert done.stderr.count("resumed at step 2") == 1
    whole, resumed = (load_file(tmp_path / run / "byg_toy_lora.safetensors") for run in ("whole", "stopped"))
    assert whole.keys() == resumed.keys() and any(v.abs().sum() > 0 for k, v in whole.items() if "lora_B" in k)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)



def test_every_process_starts_from_the_main_processs_lora(tmp_path):
    """Each process draws its LoRA's init on its own GPU; GPUs that draw differently (two models in one machine;
    here each rank's own seed) would train and keep apart while only the main one's is saved: every process takes
    the main process's init, student and EMA."""
    write_toy_dataset(tmp_path / "data", n=8, seed=0)
    files = train_on_two_processes(tmp_path / "data", tmp_path / "run", "toy", "-", "seed-by-rank")
    rank0, rank1 = files["_init.safetensors"]
    assert rank0.keys() == rank1.keys() and any(k.startswith("ema|") for k in rank0)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(v.abs().sum() > 0 for k, v in rank0.items() if "lora_A" in k)
    rank0, rank1 = files[".safetensors"]
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
