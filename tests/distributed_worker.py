"""Run under ``torchrun`` / ``accelerate launch``: a few training steps, then every rank writes its LoRA and its
own losses and steps done (``rank<i>_losses.safetensors``) and its LoRA as it started (``rank<i>_init``); a fourth
argument N stops rank 0 alone at step N ("-": never); a fifth, ``seed-by-rank``, gives each rank its own seed;
``nan-on-rank1`` gives rank 1 alone a nan loss at step 2 and every rank nan weights (one process's batch overflowing),
and each rank that stops there as diverged writes ``rank<i>_diverged`` (its step).

``toy`` (the default): the toy image model. ``toy-wan-a14b``: the two-expert Wan at shift 1, where the two ranks'
first batches fall on different experts; each rank also writes its first step's gradients before and after they
are averaged (``rank<i>_grads.safetensors``: ``local.<n>`` / ``synced.<n>`` for the n-th student tensor that has one).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from byg_core.adapters import EMA, STUDENT
from byg_core.config import TrainConfig
from byg_core.data import EditDataset, cache
from byg_core.loading import load_backbone
from byg_core.objective import ObjectiveConfig
from byg_core.train import Callbacks, Diverged, Trainer

torch.set_num_threads(1)
data_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
model = sys.argv[3] if len(sys.argv) > 3 else "toy"
stop_rank0_at = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "-" else None  # a Ctrl-C one process sees
seed_by_rank = len(sys.argv) > 5 and sys.argv[5] == "seed-by-rank"  # as GPUs of two models drawing other LoRA inits
nan_on_rank1 = len(sys.argv) > 5 and sys.argv[5] == "nan-on-rank1"
if model == "toy":
    cfg = TrainConfig(model="toy", data=str(data_dir), output_dir=str(out), steps=3, batch_size=2, rank=4, lr=1e-2,
                      warmup_identity_steps=1, checkpoint_every=0, objective=ObjectiveConfig(rollout_steps=2))
else:
    cfg = TrainConfig.for_video(dict(model=model, data=str(data_dir), output_dir=str(out), steps=2, batch_size=1,
                                     rank=4, lr=1e-2, warmup_identity_steps=0, identity_prob=0.0, checkpoint_every=0,
                                     seed=2, shift=1.0, grad_clip=0.0))
    cfg.objective.rollout_steps = 2
if seed_by_rank:
    import os

    cfg.seed = int(os.environ["RANK"])
backbone = load_backbone(model)
trainer = Trainer(cfg, backbone, cache(EditDataset.from_folder(data_dir), backbone),
                  Callbacks(should_stop=lambda: trainer.accelerator.process_index == 0 and trainer.step == stop_rank0_at))
rank = trainer.accelerator.process_index
out.mkdir(parents=True, exist_ok=True)  # only the main process makes the run folder, maybe after this rank ends
save_file({f"{role}|" + k.replace("/", "|"): v.contiguous() for role in (STUDENT, EMA) for k, v in
           trainer.adapters.state_dict(role).items()}, out / f"rank{rank}_init.safetensors")
if model != "toy":
    sync = trainer._sync_and_clip

    def sync_and_record():
        params, grads = trainer.adapters.parameters(STUDENT), {}
        if trainer.step == 0:
            grads = {f"local.{n}": p.grad.clone() for n, p in enumerate(params) if p.grad is not None}
        sync()
        if trainer.step == 0:
            grads |= {f"synced.{n}": p.grad.contiguous() for n, p in enumerate(params) if p.grad is not None}
            save_file(grads, out / f"rank{rank}_grads.safetensors")

    trainer._sync_and_clip = sync_and_record
if nan_on_rank1:
    trainer.cfg.log_every = 1
    sync, step = trainer._sync_and_clip, trainer.train_step

    def nan_gradients():  # averaged: nan weights on every rank
        if rank == 1 and trainer.step == 1:
            for p in trainer.adapters.parameters(STUDENT):
                p.grad.fill_(float("nan"))
        sync()

    def nan_loss_here():  # the batch's loss is nan on rank 1 alone
        losses = step()
        if rank == 1 and trainer.step == 2:
            losses.total = losses.total * float("nan")
        return losses

    trainer._sync_and_clip, trainer.train_step = nan_gradients, nan_loss_here
    try:
        trainer.run()
    except Diverged:
        save_file({"step": torch.tensor(trainer.step)}, out / f"rank{rank}_diverged.safetensors")
    sys.exit(0)
trainer.run()
state = {k.replace("/", "|"): v.contiguous() for k, v in trainer.adapters.state_dict(STUDENT).items()}
save_file(state, out / f"rank{rank}.safetensors")
save_file({"loss": torch.tensor([h["loss"] for h in trainer.history]), "steps": torch.tensor(trainer.step)},
          out / f"rank{rank}_losses.safetensors")
