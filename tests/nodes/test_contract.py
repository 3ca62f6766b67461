"""Every node's ComfyUI V1 contract, and importing the pack the way ComfyUI does, with no ComfyUI present."""

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACK_DIR = Path(__file__).resolve().parents[2]

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
CUSTOM_TYPES = {"BYG_MODEL", "BYG_DATASET", "BYG_OBJECTIVE", "BYG_LORA"}
NAMED = {"BootstrapSampler", "DirectionalPriorLoss", "CycleTrainer", "BYGLoRALoader", "BYGVideoEdit"}


def all_inputs(cls):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    return {**spec.get("required", {}), **spec.get("optional", {})}


def test_pack_registers_the_named_nodes_with_display_names(pack):
    assert NAMED <= set(pack.NODE_CLASS_MAPPINGS)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    assert all(name.startswith("ByG ") for name in pack.NODE_DISPLAY_NAME_MAPPINGS.values())


@pytest.mark.parametrize("name", ["BYGModelLoader", "BYGDataset", "DirectionalPriorLoss", "CycleTrainer", "BYGLoRALoader",
                                  "BootstrapSampler", "BYGVideoEdit", "BYGToyScene", "BYGToyDataset"])
def test_node_contract(nodes, name):
    cls = nodes[name]
    assert cls.CATEGORY.startswith("ByG/") and cls.DESCRIPTION
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    inputs = all_inputs(cls)
    for key, declared in inputs.items():
        kind, options = declared
        assert options.get("tooltip"), f"{name}.{key} has no tooltip"
        if isinstance(kind, list):
            assert options.get("default", kind[0]) in kind
        elif kind in WIDGET_TYPES:
            assert "default" in options
            if kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"]
        else:
            assert kind in CUSTOM_TYPES | {"IMAGE", "CLIP", "VAE"}, f"{name}.{key}: unexpected socket type {kind}"
    signature = inspect.signature(getattr(cls, cls.FUNCTION))
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    assert takes_any or set(inputs) <= set(signature.parameters), f"{name}.{cls.FUNCTION} misses inputs"
    for key in cls.INPUT_TYPES().get("required", {}):
        parameter = signature.parameters.get(key)
        assert parameter is None or parameter.default is inspect.Parameter.empty or takes_any


def test_the_seed_widgets_stop_where_a_training_config_does(nodes):
    """A config refuses seeds past MAX_SEED (its 64-bit step seeds); the widgets must not offer them."""
    from byg_core.config import MAX_SEED

    seed = nodes["CycleTrainer"].INPUT_TYPES()["required"]["seed"][1]
    assert (seed["min"], seed["max"]) == (0, MAX_SEED)


def test_outputs_are_the_expected_types(nodes):
    expected = {
        "BYGModelLoader": ("BYG_MODEL",),
        "BYGDataset": ("BYG_DATASET", "STRING"),
        "DirectionalPriorLoss": ("BYG_OBJECTIVE", "IMAGE"),
        "CycleTrainer": ("BYG_LORA", "IMAGE"),
        "BYGLoRALoader": ("BYG_MODEL",),
        "BootstrapSampler": ("IMAGE", "IMAGE"),
        "BYGVideoEdit": ("IMAGE",),
    }
    assert {name: nodes[name].RETURN_TYPES for name in expected} == expected


def test_objective_widgets_cover_every_objective_field(nodes):
    import dataclasses

    from byg_core.objective import ObjectiveConfig

    fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    inputs = nodes["DirectionalPriorLoss"].INPUT_TYPES()
    # those added later are the last inputs, in the order added, so that a workflow saved before them keeps its
    # widgets' values in place
    later = ["prior_guidance", "prior_guidance_terms"]
    assert fields == set(inputs["required"]) | set(later)
    assert list(inputs["optional"])[-len(later):] == later


def test_importing_the_pack_needs_no_comfyui_and_loads_nothing_heavy():
    """A fresh interpreter imports the pack by path, as ComfyUI does: no comfy, no diffusers/peft yet."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        path = {str(PACK_DIR)!r}
        name = path.replace(".", "_x_")
        spec = importlib.util.spec_from_file_location(name, path + "/__init__.py", submodule_search_locations=[path])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        assert len(module.NODE_CLASS_MAPPINGS) >= 7
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("comfy", "folder_paths", "diffusers", "peft", "accelerate"))
        print(heavy)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_importing_the_pack_shadows_no_top_level_name(tmp_path):
    """After ComfyUI imports the pack, ``nodes`` is still ComfyUI's nodes.py and ``scripts`` whatever it was before."""
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "nodes.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(comfy)!r})  # ComfyUI's main.py runs from its own folder
        before = {{n: importlib.util.find_spec(n) for n in ("nodes", "scripts", "tests", "examples")}}
        path = {str(PACK_DIR)!r}
        spec = importlib.util.spec_from_file_location(path.replace(".", "_x_"), path + "/__init__.py",
                                                      submodule_search_locations=[path])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        after = {{n: importlib.util.find_spec(n) for n in before}}
        print({{n: (s.origin if s else None) for n, s in after.items()}})
        assert after == before, (before, after)
        assert path not in sys.path
        import byg_core, nodes
        assert nodes.__file__ == {str(comfy / "nodes.py")!r}, nodes.__file__
        assert byg_core.__file__ == path + "/byg_core/__init__.py", byg_core.__file__
        from byg_core.objective import ObjectiveConfig  # the nodes' lazy imports resolve
        module.NODE_CLASS_MAPPINGS["DirectionalPriorLoss"].INPUT_TYPES()
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


def test_on_python_before_3_11_the_pack_says_what_it_needs():
    """ComfyUI runs on 3.9 and 3.10 too: there CycleTrainer's TOML reader (tomllib) failed deep in an import and every
    train workflow showed missing nodes; the pack now fails to load with one line naming the Python it needs."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.version_info = (3, 10, 14, "final", 0)
        path = {str(PACK_DIR)!r}
        spec = importlib.util.spec_from_file_location("pack_on_310", path + "/__init__.py", submodule_search_locations=[path])
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except ImportError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("comfyui-byg needs Python 3.11 or later; this ComfyUI runs Python ")


def test_the_toy_dataset_seed_stays_below_the_held_out_scenes(nodes):
    """The toy bench's held-out scenes are drawn from seeds 10000 and up; the library refuses those for training."""
    assert nodes["BYGToyDataset"].INPUT_TYPES()["required"]["seed"][1]["max"] == 9999
