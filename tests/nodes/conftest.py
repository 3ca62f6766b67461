"""Fixtures for the node tests: the pack imported by path as ComfyUI imports it, host folders in tmp."""

import importlib.util
import sys
from pathlib import Path

import pytest

PACK_DIR = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="session")
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture(autouse=True)
def host_folders(tmp_path, monkeypatch):
    """No ComfyUI here: the host adapter's fallback folders, one set per test."""
    for var, sub in (("BYG_LORAS_DIR", "loras"), ("BYG_OUTPUT_DIR", "output"), ("BYG_INPUT_DIR", "input")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


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


@pytest.fixture(scope="session")
def run(nodes):
    """Call a node as ComfyUI's executor does: an instance, then FUNCTION with keyword inputs."""

    def call(node_type: str, **inputs):
        cls = nodes[node_type]
        out = getattr(cls(), cls.FUNCTION)(**inputs)
        assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES)
        return out

    return call
