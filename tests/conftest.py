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
