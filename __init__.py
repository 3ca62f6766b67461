"""comfyui-byg: ComfyUI entry point. Imports nothing heavy: the nodes load byg_core lazily.

ComfyUI imports this folder as a module by its path. The library inside it is registered as
the top-level module ``byg_core`` by its own path, and nothing else of the pack's is: putting
the pack's folder on ``sys.path`` would make its ``nodes/``, ``scripts/`` and ``tests/`` shadow
ComfyUI's own ``nodes.py`` (and any other pack's top-level names) for everyone.
"""

import importlib.util
import os
import sys

if sys.version_info < (3, 11):  # ComfyUI runs on 3.9 and 3.10 too; the pack's library reads TOML with tomllib (3.11)
    raise ImportError(f"comfyui-byg needs Python 3.11 or later; this ComfyUI runs Python {sys.version.split()[0]}: "
                      "run ComfyUI on Python 3.11+ (ComfyUI's portable builds ship 3.12 or later)")


def _register_byg_core() -> None:
    """Make ``import byg_core`` find the copy in this folder (a pip-installed copy of the same folder is kept)."""
    here = os.path.dirname(os.path.abspath(__file__))
    package = os.path.join(here, "byg_core")
    loaded = sys.modules.get("byg_core")
    if loaded is not None:
        if os.path.dirname(os.path.abspath(loaded.__file__)) != package:
            print(f"[comfyui-byg] warning: byg_core is already imported from {loaded.__file__}, not from {package}")
        return
    spec = importlib.util.spec_from_file_location(
        "byg_core", os.path.join(package, "__init__.py"), submodule_search_locations=[package]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["byg_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["byg_core"]
        raise


_register_byg_core()

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
