"""Shared test settings and fixtures.

One torch thread (the test models are tiny; several threads thrash on a busy 2-core CI). The module-scoped
``llama`` (a tiny random Llama loaded through ``ns.load``) and ``samples`` (three text prompts, `PROMPTS`) are
used by the steering tests; a test module that defines its own fixture of the same name uses its own.
"""

import pytest
import torch

import nnshift as ns
from nnshift.models import load
from nnshift.models.testing import build_tiny

torch.set_num_threads(1)

PROMPTS = ["what color is the dog", "how many", "is there a cat on the table near the tree"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random Llama (text only), float32, one per test module."""
    return load(build_tiny("llama", tmp_path_factory.mktemp("llama")), dtype="float32")


@pytest.fixture(scope="module")
def samples():
    """Three text samples of different lengths (left padding is exercised)."""
    return [ns.Sample(id=f"t{i}", prompt=p) for i, p in enumerate(PROMPTS)]
