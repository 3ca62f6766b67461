"""Fixtures shared by every test: one thread (2-core machines), everything seeded."""

import random

import numpy as np
import pytest
import torch

from helpers import make_flux_backbone

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def flux_backbone():
    return make_flux_backbone()


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test; the hub's variables are unset, so nothing says 'offline' for us."""
    import socket

    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a socket was opened: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
