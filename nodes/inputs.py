"""Input declarations for ``INPUT_TYPES``: every input carries a tooltip."""

from __future__ import annotations

MAX_SEED = 2**32 - 1  # byg_core derives per-step seeds from it; torch takes seeds < 2**64


def socket(kind: str, tooltip: str) -> tuple:
    return (kind, {"tooltip": tooltip})


def integer(default: int, low: int, high: int, tooltip: str, step: int = 1) -> tuple:
    return ("INT", {"default": default, "min": low, "max": high, "step": step, "tooltip": tooltip})


def number(default: float, low: float, high: float, step: float, tooltip: str) -> tuple:
    return ("FLOAT", {"default": default, "min": low, "max": high, "step": step, "tooltip": tooltip})


def flag(default: bool, tooltip: str) -> tuple:
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


def text(default: str, tooltip: str, multiline: bool = False) -> tuple:
    return ("STRING", {"default": default, "multiline": multiline, "tooltip": tooltip})


def choice(options: list[str], tooltip: str, default: str | None = None) -> tuple:
    return (list(options), {"default": default if default is not None else options[0], "tooltip": tooltip})


def seed(tooltip: str, max: int = MAX_SEED) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": max, "control_after_generate": True, "tooltip": tooltip})
