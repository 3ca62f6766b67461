"""The toy shapes world as nodes, so the toy train-and-edit graph needs no files: a scene image and a dataset."""

from __future__ import annotations

from . import host
from . import inputs as I
from .dataset import read_dataset
from .values import DATASET


class BYGToyScene:
    DESCRIPTION = "Renders one toy-world scene (a shape of one colour on a background of another) and its caption."
    CATEGORY = "ByG/toy"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "caption")
    OUTPUT_TOOLTIPS = ("The scene, an IMAGE of one frame.", "Its caption, e.g. 'a red circle on a blue background'.")
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        from byg_core.toy.world import COLORS, DEFAULT_RESOLUTION, SHAPES

        return {
            "required": {
                "shape": I.choice(list(SHAPES), "The shape's kind."),
                "shape_color": I.choice(list(COLORS), "The shape's colour.", "red"),
                "bg_color": I.choice(list(COLORS), "The background's colour (not the shape's).", "blue"),
                "size": I.integer(DEFAULT_RESOLUTION, 2, 1024, "Image side in pixels (the toy model takes 16).", 2),
            }
        }

    def render(self, shape, shape_color, bg_color, size):
        from byg_core.toy.world import Scene, caption, render

        try:
            scene = Scene(shape, shape_color, bg_color)
        except ValueError as error:
            raise ValueError(f"BYGToyScene: {error}") from error
        return (host.pixels_to_image(render(scene, size).unsqueeze(0)), caption(scene))


class BYGToyDataset:
    DESCRIPTION = (
        "Writes a toy-world edit dataset (images + edits.jsonl, held-out colour pairs excluded) into the output "
        "folder and reads it back like BYGDataset. Only sources are written: ByG never sees an edited image. "
        "A folder already holding this dataset is read as it is; one holding anything else is never written into."
    )
    CATEGORY = "ByG/toy"
    RETURN_TYPES = (DATASET, "STRING")
    RETURN_NAMES = ("dataset", "report")
    OUTPUT_TOOLTIPS = ("The validated toy edit tuples.", "How many tuples were written and kept.")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        from byg_core.toy.world import HELD_OUT_SCENE_SEEDS

        return {
            "required": {
                "count": I.integer(256, 1, 100000, "How many edit tuples to draw."),
                "seed": I.seed("Seed of the random scenes and edits (the same seed writes the same dataset); keep "
                               "'control after generate' on fixed. Below 10000: the toy bench's held-out scenes are "
                               "drawn from seeds 10000 and up.", max=HELD_OUT_SCENE_SEEDS - 1),
                "name": I.text("toy", "Folder name under <output>/byg/datasets/ the dataset is written to (a new "
                                      "name for another count or seed: a folder holding other files is kept)."),
            }
        }

    def make(self, count, seed, name):
        from byg_core.toy.dataset import write_toy_dataset

        if not name.strip() or any(part in ("..", "") for part in name.strip().split("/")):
            raise ValueError(f"BYGToyDataset: 'name' must be a plain folder name, got {name!r}")
        try:
            root = write_toy_dataset(host.output_dir() / "byg" / "datasets" / name.strip(), n=count, seed=seed,
                                     instead="Give the 'name' widget a new folder name to write this count and seed (a seed "
                                             "that changed by itself: set the seed's 'control after generate' to fixed)")
        except FileExistsError as error:
            raise ValueError(f"BYGToyDataset: {error}") from None
        data = read_dataset(root, True, None, "BYGToyDataset")
        return (data, data.report)
