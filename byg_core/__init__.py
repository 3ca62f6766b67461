"""byg_core: Bootstrap Your Generator (ByG), unpaired training of flow-matching editors.

Time convention (paper section 3), stated once for the whole library:
``t = 1`` is pure noise, ``t = 0`` is data, ``x_t = (1 - t) x + t eps``, the velocity
target is ``eps - x`` and the one-step prediction is ``y_hat = y_t - t v``.
This package never imports ComfyUI.
"""

__version__ = "0.1.0"
