"""The node classes ComfyUI registers, and their display names (all under the "ByG" menu)."""

from .dataset import BYGDataset
from .edit import BootstrapSampler, BYGVideoEdit
from .lora import BYGLoRALoader
from .model import BYGModelLoader
from .objective import DirectionalPriorLoss
from .toy import BYGToyDataset, BYGToyScene
from .train import CycleTrainer

NODE_DISPLAY_NAME_MAPPINGS = {
    "BYGModelLoader": "ByG Load Model",
    "BYGDataset": "ByG Edit Dataset",
    "DirectionalPriorLoss": "ByG Directional Prior Loss",
    "CycleTrainer": "ByG Cycle Trainer",
    "BYGLoRALoader": "ByG LoRA Loader",
    "BootstrapSampler": "ByG Bootstrap Sampler",
    "BYGVideoEdit": "ByG Video Edit",
    "BYGToyScene": "ByG Toy Scene",
    "BYGToyDataset": "ByG Toy Dataset",
}
NODE_CLASS_MAPPINGS = {name: globals()[name] for name in NODE_DISPLAY_NAME_MAPPINGS}
