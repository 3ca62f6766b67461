"""Fixtures for the node tests: the pack imported by path and every node run as ComfyUI's executor runs it.

ComfyUI's executor calls a node's FUNCTION inside ``torch.inference_mode()`` (``execution.py``), with its
own ``folder_paths``, ``comfy.utils`` and ``comfy.model_management`` importable. The ``host`` fixture puts
stand-ins of those three modules in ``sys.modules`` (folders in tmp, a progress hook that records what the
server would send and raises on Cancel as ComfyUI's does), so the host adapter's real branch runs; the
``run`` fixture calls nodes under inference mode.
"""

import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

PACK_DIR = Path(__file__).resolve().parents[2]
FOLDERS = ("loras", "output", "input", "temp", "diffusion_models")


def import_pack(pack_dir: Path = PACK_DIR):
    """ComfyUI's ``load_custom_node``: module name = the folder's path, spec on its ``__init__.py``."""
    name = str(pack_dir).replace(".", "_x_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, pack_dir / "__init__.py", submodule_search_locations=[str(pack_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class InterruptProcessingException(Exception):
    """Stands for ``comfy.model_management.InterruptProcessingException``."""


@dataclass
class HostState:
    """What the stand-in host saw, and when its user presses Cancel."""

    root: Path
    cancel_at: int | None = None  # the user presses Cancel once a progress bar reaches this value
    interrupt_flag: bool = False
    updates: list = field(default_factory=list)  # every progress value the server would send
    previews: int = 0  # preview images the server would send
    device: str = "cpu"  # model_management.get_torch_device()
    unloads: list = field(default_factory=list)  # the progress value at each unload_all_models


def _stand_ins(state: HostState) -> dict[str, types.ModuleType]:
    """``folder_paths``, ``comfy``, ``comfy.utils``, ``comfy.model_management`` as ComfyUI 0.3.64 behaves."""

    def folder(name):
        return state.root / name

    def get_filename_list(name):
        root = folder(name)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def get_full_path(name, filename):
        path = folder(name) / filename
        return str(path) if path.is_file() else None

    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_folder_paths = lambda name: [str(folder(name))]
    folder_paths.get_filename_list = get_filename_list
    folder_paths.get_full_path = get_full_path
    folder_paths.get_output_directory = lambda: str(folder("output"))
    folder_paths.get_input_directory = lambda: str(folder("input"))
    folder_paths.get_temp_directory = lambda: str(folder("temp"))

    management = types.ModuleType("comfy.model_management")
    management.InterruptProcessingException = InterruptProcessingException

    def processing_interrupted():
        return state.interrupt_flag

    def throw_exception_if_processing_interrupted():  # ComfyUI's resets the flag as it raises
        if state.interrupt_flag:
            state.interrupt_flag = False
            raise InterruptProcessingException()

    management.processing_interrupted = processing_interrupted
    management.get_torch_device = lambda: torch.device(state.device)
    management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    management.unload_all_models = lambda: state.unloads.append(max(state.updates, default=0))
    management.soft_empty_cache = lambda force=False: None

    def hook(value, total, preview, node_id=None):  # main.py's hook: raise on Cancel, else send progress
        management.throw_exception_if_processing_interrupted()
        state.updates.append(value)
        state.previews += preview is not None
        if state.cancel_at is not None and value >= state.cancel_at:
            state.interrupt_flag = True

    class ProgressBar:  # comfy.utils.ProgressBar
        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0

        def update_absolute(self, value, total=None, preview=None):
            self.total = total if total is not None else self.total
            self.current = min(value, self.total)
            hook(self.current, self.total, preview)

    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.utils, comfy.model_management = utils, management
    return {"folder_paths": folder_paths, "comfy": comfy, "comfy.utils": utils, "comfy.model_management": management}


@pytest.fixture(autouse=True)
def host(tmp_path, monkeypatch):
    """ComfyUI's host modules, stood in for, with fresh folders per test."""
    state = HostState(tmp_path)
    for name in FOLDERS:
        (tmp_path / name).mkdir()
    for name, module in _stand_ins(state).items():
        monkeypatch.setitem(sys.modules, name, module)
    return state


@pytest.fixture
def host_folders(host):
    return host.root


@pytest.fixture
def no_host(monkeypatch, tmp_path):
    """No ComfyUI at all: the host adapter's fallback (environment variables, no progress, no interrupt)."""
    for name in ("folder_paths", "comfy", "comfy.utils", "comfy.model_management"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    for var, sub in (("BYG_LORAS_DIR", "loras"), ("BYG_OUTPUT_DIR", "output"), ("BYG_INPUT_DIR", "input"),
                     ("BYG_TEMP_DIR", "temp")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="session")
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture
def toy_model_name(monkeypatch):
    """The shipped toy base when its weights file exists, else a registered random-init toy base (same architecture)."""
    from byg_core.loading import LOADERS
    from byg_core.toy.model import DEFAULT_TOY_WEIGHTS, build_toy_backbone

    if DEFAULT_TOY_WEIGHTS.is_file():
        return "toy"
    monkeypatch.setitem(LOADERS, "toy-random-test", lambda **options: build_toy_backbone(weights=None, **options))
    return "toy-random-test"


@pytest.fixture(scope="session")
def submodule(pack):
    """A submodule of the imported pack: ``submodule("nodes.host")``."""
    return lambda name: sys.modules[f"{pack.__name__}.{name}"]


def execute(cls, function: str, inputs: dict):
    """ComfyUI's executor: an instance, FUNCTION with keyword inputs, inside ``torch.inference_mode()``;
    a dict return value splits into its ``result`` tuple and ``ui`` output (``execution.get_output_data``)."""
    with torch.inference_mode():
        out = getattr(cls(), function)(**inputs)
    ui = None
    if isinstance(out, dict):
        out, ui = out["result"], out.get("ui")
    assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES)
    return out, ui


@pytest.fixture(scope="session")
def executor():
    """``execute(cls, function, inputs)`` for a class that is not registered (a variant made by a test)."""
    return execute


@pytest.fixture(scope="session")
def run(nodes):
    """Call a node as ComfyUI's executor does; returns its outputs."""
    return lambda node_type, **inputs: execute(nodes[node_type], nodes[node_type].FUNCTION, inputs)[0]


@pytest.fixture(scope="session")
def run_ui(nodes):
    """Like ``run``, returning (outputs, ui) for output nodes."""
    return lambda node_type, **inputs: execute(nodes[node_type], nodes[node_type].FUNCTION, inputs)
