"""Shared test settings and fixtures.

One torch thread (the test models are tiny; several threads thrash on a busy 2-core CI). The module-scoped
``llama`` (a tiny random Llama loaded through ``ns.load``) and ``samples`` (three text prompts, `PROMPTS`) are
used by the steering tests; a test module that defines its own fixture of the same name uses its own.
``shapes_vlm`` (the zoo's shapes-base) and ``yesno_number_vector`` (its coarse yes/no -> number vector at layer
3, from 16 + 16 questions) serve the sweep and calibration tests.
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


@pytest.fixture(scope="module")
def shapes_vlm():
    """The zoo's shapes-base model."""
    return ns.zoo.load("shapes-base")


@pytest.fixture(scope="module")
def yesno_number_vector(shapes_vlm):
    """shapes-base's `answer_type_vector` yes/no -> number at layer 3 (last prompt token, reference types)."""
    yn = ns.zoo.dataset(16, task="vqa", answer_type="yes/no", seed=201)
    num = ns.zoo.dataset(16, task="vqa", answer_type="number", seed=202)
    acts = ns.capture(shapes_vlm, yn + num, layer=3, at="last_prompt", progress=False)
    return ns.steering.answer_type_vector(acts, "yes/no", "number", by="reference")
