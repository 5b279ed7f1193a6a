"""RunOptions: validation, precedence (keyword > options > the runner's default), and the four runners honouring it."""

import warnings

import pytest
import torch

import nnshift as ns
import nnshift.generation as gen
from nnshift.errors import NnshiftError, OptionsError
from nnshift.options import RunOptions, batched, run_options
from nnshift.steering import SteeringVector, by_impact, steer

warnings.filterwarnings("ignore")


def _patch(vlm, seed=0, layer=1, alpha=3.0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(vlm.hidden_size, generator=g), layer=layer).patch(alpha)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": True},
        {"batch_size": 2.0},
        {"max_new_tokens": 0},
        {"max_new_tokens": -3},
        {"max_new_tokens": False},
        {"progress": 1},
        {"remote": "yes"},
    ],
)
def test_invalid_options_raise_with_a_hint(kwargs):
    with pytest.raises(OptionsError) as info:
        RunOptions(**kwargs)
    assert isinstance(info.value, NnshiftError) and isinstance(info.value, ValueError)
    assert info.value.hint
    with pytest.raises(OptionsError):
        RunOptions().replace(**kwargs)


def test_options_are_frozen_and_precedence_is_keyword_then_options_then_defaults():
    opts = RunOptions(batch_size=4, max_new_tokens=7)
    with pytest.raises(AttributeError):
        opts.batch_size = 2  # type: ignore[misc]
    assert run_options() == RunOptions()
    assert run_options(None, RunOptions(max_new_tokens=32)).max_new_tokens == 32
    assert run_options(opts, RunOptions(max_new_tokens=32)) == opts
    got = run_options(opts, RunOptions(max_new_tokens=32), batch_size=1, progress=None)
    assert got == RunOptions(batch_size=1, max_new_tokens=7)
    with pytest.raises(OptionsError):
        run_options({"batch_size": 2})
    with pytest.raises(OptionsError):
        run_options(None, batch=2)


def test_batched_yields_starts_and_batches_in_order():
    items = list(range(7))
    got = list(batched(items, RunOptions(batch_size=3, progress=False), "t"))
    assert got == [(0, [0, 1, 2]), (3, [3, 4, 5]), (6, [6])]


def _forwards(vlm):
    calls = []
    return calls, vlm.layer_module(0).register_forward_hook(lambda *_: calls.append(1))


def test_bad_options_raise_before_any_forward_in_every_runner(llama, samples):
    calls, handle = _forwards(llama)
    patch = _patch(llama)
    try:
        for run in (
            lambda: ns.generate(llama, samples, batch_size=0),
            lambda: steer(llama, samples, patch, max_new_tokens=0),
            lambda: ns.capture(llama, samples, batch_size=True, progress=False),
            lambda: by_impact(llama, samples, [patch], max_new_tokens=-1),
            lambda: steer(llama, samples, patch, 3, False, options=RunOptions()),
        ):
            with pytest.raises(OptionsError):
                run()
    finally:
        handle.remove()
    assert calls == []


def test_runners_honour_options_like_keywords(llama, samples):
    opts = RunOptions(batch_size=2, max_new_tokens=3, progress=False)
    assert ns.generate(llama, samples, options=opts) == ns.generate(
        llama, samples, max_new_tokens=3, batch_size=1, progress=False
    )
    assert ns.generate(llama, samples, options=opts) != ns.generate(llama, samples, max_new_tokens=6, progress=False)
    patch = _patch(llama)
    assert steer(llama, samples, patch, options=opts) == steer(llama, samples, patch, 3, 3, progress=False)
    # a keyword wins over options
    assert steer(llama, samples, patch, max_new_tokens=6, options=opts) == steer(
        llama, samples, patch, 6, progress=False
    )
    a = ns.capture(llama, samples, layer=1, at="generated", reduce="mean", options=opts)
    b = ns.capture(
        llama, samples, layer=1, at="generated", reduce="mean", batch_size=2, max_new_tokens=3, progress=False
    )
    assert torch.equal(a.tensor, b.tensor) and a.info["generation"]["max_new_tokens"] == 3
    scores = by_impact(llama, samples, {"p": patch}, options=opts, max_targets=None)
    again = by_impact(llama, samples, {"p": patch}, max_new_tokens=3, batch_size=3, progress=False, max_targets=None)
    assert scores[0].answers == again[0].answers == steer(llama, samples, patch, 3, progress=False)


def test_remote_reaches_every_generation(llama, samples, monkeypatch):
    seen = []
    real = gen.run_generation

    def spy(vlm, inputs, max_new_tokens, layers=(), edit=None, remote=False):
        seen.append((remote, max_new_tokens))
        return real(vlm, inputs, max_new_tokens, layers=layers, edit=edit, remote=False)

    monkeypatch.setattr(gen, "run_generation", spy)
    opts = RunOptions(batch_size=3, max_new_tokens=2, progress=False, remote=True)
    ns.generate(llama, samples, options=opts)
    ns.generate(llama, samples, max_new_tokens=2, progress=False, remote=True)
    by_impact(llama, samples, [_patch(llama)], options=opts, max_targets=None)
    assert seen == [(True, 2)] * 4
