"""comfyui-byg: ComfyUI entry point. Imports nothing heavy: the nodes load byg_core lazily.

ComfyUI imports this folder as a module by its path; the pack's folder is put on
``sys.path`` so the library inside it is importable as ``byg_core``.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
