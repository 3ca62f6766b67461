"""Run under ``accelerate launch``: a few toy training steps, then every rank writes its LoRA."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from byg_core.adapters import STUDENT
from byg_core.config import TrainConfig
from byg_core.data import EditDataset, cache
from byg_core.loading import load_backbone
from byg_core.objective import ObjectiveConfig
from byg_core.train import Trainer

torch.set_num_threads(1)
data_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = TrainConfig(model="toy", data=str(data_dir), output_dir=str(out), steps=3, batch_size=2, rank=4, lr=1e-2,
                  warmup_identity_steps=1, checkpoint_every=0, objective=ObjectiveConfig(rollout_steps=2))
backbone = load_backbone("toy")
trainer = Trainer(cfg, backbone, cache(EditDataset.from_folder(data_dir), backbone))
trainer.run()
rank = trainer.accelerator.process_index
state = {k.replace("/", "|"): v.contiguous() for k, v in trainer.adapters.state_dict(STUDENT).items()}
out.mkdir(parents=True, exist_ok=True)  # only the main process makes the run folder, maybe after this rank ends
save_file(state, out / f"rank{rank}.safetensors")
