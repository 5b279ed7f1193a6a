"""Processor options through ns.load (Qwen2-VL image sizes): they change the image tokens and the store key."""

from __future__ import annotations

import pytest

import nnshift as ns
from nnshift.capture import store_key
from nnshift.errors import ArgumentError, StoreMismatchError
from nnshift.models.testing import build_tiny, tiny_image


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl"))


def test_image_size_options_change_the_image_tokens_and_the_key(folder, tmp_path) -> None:
    samples = [ns.Sample(id="a", prompt="what is it", image=tiny_image(0))]
    small = ns.load(folder)
    large = ns.load(folder, processor_options={"min_pixels": 112 * 112, "max_pixels": 112 * 112})
    n_small = int(small.image_token_mask(small.prepare(samples)["input_ids"]).sum())
    n_large = int(large.image_token_mask(large.prepare(samples)["input_ids"]).sum())
    assert n_large > n_small
    sel = ns.positions.as_selector("last_prompt")
    assert (
        store_key(small, samples, [0], sel, None, small.dtype, 1)["processor"]
        != store_key(large, samples, [0], sel, None, large.dtype, 1)["processor"]
    )
    ns.capture(small, samples, layer=0, out=tmp_path / "s", progress=False)
    with pytest.raises(StoreMismatchError, match="processor"):
        ns.capture(large, samples, layer=0, out=tmp_path / "s", progress=False)


def test_processor_options_and_a_processor_are_refused_together(folder) -> None:
    small = ns.load(folder)
    with pytest.raises(ArgumentError, match="processor_options"):
        ns.load(folder, processor=small.processor, processor_options={"max_pixels": 1})


def test_cli_processor_option_reaches_the_processor(folder, tmp_path) -> None:
    from nnshift.cli import main
    from nnshift.data import save_jsonl

    data = save_jsonl([ns.Sample(id="a", prompt="what is it", image=tiny_image(0))], tmp_path / "d.jsonl", tmp_path)
    common = ["capture", "--model", str(folder), "--data", str(data), "--layer", "0", "--dtype", "float32"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--processor-option", "max_pixels=12544", "--processor-option", "min_pixels=12544",
                 "--out", str(tmp_path / "b")]) == 0  # fmt: skip
    a = ns.load_activations(tmp_path / "a").info["processor"]
    b = ns.load_activations(tmp_path / "b").info["processor"]
    assert a != b
    assert main([*common, "--processor-option", "oops", "--out", str(tmp_path / "c")]) == 2
