"""Shared test settings and fixtures.

One torch thread (the test models are tiny; several threads thrash on a busy 2-core CI). The module-scoped
``llama`` (a tiny random Llama loaded through ``ns.load``) and ``samples`` (three text prompts, `PROMPTS`) are
used by the steering tests; a test module that defines its own fixture of the same name uses its own.
``shapes_vlm`` (the zoo's shapes-base) and ``yesno_number_vector`` (its coarse yes/no -> number vector at layer
3, from 16 + 16 questions) serve the sweep and calibration tests; ``tiny_family`` builds a tiny model of a family
(cached) with four VQA-like samples of different lengths, for the tests of the sweep's shared path.
"""

import pytest
import torch

import nnshift as ns
from nnshift.models import load
from nnshift.models.testing import build_tiny, cached_tiny, tiny_image

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


TINY_WORDS = ["what color is the dog ?", "how many", "is there a red cat on the mat near the dog", "how many cats"]


@pytest.fixture(scope="session")
def tiny_family():
    """``make(arch) -> (vlm, samples)``: a tiny model of ``arch`` (2 text layers; 1 vision layer) in float32 and
    four samples of different lengths (with tiny images when the model is multimodal)."""

    def make(arch):
        opts = {"layers": 2} if arch == "gpt2" else {"vision_layers": 1, "text_layers": 2}
        vlm = ns.load(cached_tiny(arch, **opts), dtype="float32")
        img = vlm.is_multimodal
        return vlm, [
            ns.Sample(id=f"s{i}", prompt=p, image=tiny_image(i) if img else None, answers=[["yes", "2"][i % 2]])
            for i, p in enumerate(TINY_WORDS)
        ]

    return make
