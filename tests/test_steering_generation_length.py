"""A patch inside the user's own ``vlm.model.generate(...)`` steers every decode step, however the length is set.

Each way of setting the length (``max_new_tokens=``, ``max_length=``, the model's ``generation_config``, nothing)
gets one test: the steered answers differ from the unsteered ones and equal ``ns.steer`` with the same patch
and the same number of steps. ``positions="generated"`` edits decode steps only, so a patch that skipped them
would leave the answers unsteered.
"""

import contextlib
import warnings

import pytest
import torch

import nnshift as ns
from nnshift.errors import SteeringError
from nnshift.generation import trim_answer
from nnshift.steering import SteeringVector, steer


def _patch(vlm, positions="generated", alpha=3.0, layer=1, seed=5):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(vlm.hidden_size, generator=g), layer=layer).patch(alpha, positions)


def _own_generation(vlm, inputs, patch=None, **length):
    """The user's own generation: ``patch(vlm, inputs=inputs)`` then statements after it; (answers, n steps)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with vlm.model.generate(dict(inputs), do_sample=False, pad_token_id=vlm.pad_token_id, **length) as tracer:
            if patch is not None:
                patch(vlm, inputs=inputs)
            after = [1].save()  # a statement after the patch: must run
            ids = tracer.result.save()
    assert after == [1], "the statements after patch(...) did not run"
    cut = [str(w.message) for w in caught if "never reached" in str(w.message) or "cut short" in str(w.message)]
    assert not cut, cut
    plen = inputs["input_ids"].shape[1]
    new = ids[:, plen:]
    return [vlm.decode(trim_answer(row.tolist(), vlm.eos_token_ids)) for row in new], int(new.shape[1])


def _check(vlm, samples, patch, **length):
    inputs = vlm.prepare(samples)
    plain, n_plain = _own_generation(vlm, inputs, **length)
    steered, n = _own_generation(vlm, inputs, patch, **length)
    assert n > 1, "the generation must have decode steps"
    assert steered != plain, "the decode steps were left unsteered"
    assert steered == steer(vlm, samples, patch, max_new_tokens=n, progress=False)
    return n, n_plain


@contextlib.contextmanager
def _generation_config(vlm, **values):
    cfg = vlm.hf.generation_config
    old = {k: getattr(cfg, k, None) for k in values}
    for k, v in values.items():
        setattr(cfg, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(cfg, k, v)


# ---------------------------------------------------------------------------- one test per way to set the length


def test_max_new_tokens(llama, samples):
    n, _ = _check(llama, samples, _patch(llama), max_new_tokens=6)
    assert n == 6


def test_max_length(llama, samples):
    plen = llama.prepare(samples)["input_ids"].shape[1]
    n, _ = _check(llama, samples, _patch(llama), max_length=plen + 5)
    assert n == 5


def test_generation_config_max_new_tokens(llama, samples):
    with _generation_config(llama, max_new_tokens=7):
        n, _ = _check(llama, samples, _patch(llama))
    assert n == 7


def test_generation_config_max_length(llama, samples):
    plen = llama.prepare(samples)["input_ids"].shape[1]
    with _generation_config(llama, max_length=plen + 4):
        n, _ = _check(llama, samples, _patch(llama))
    assert n == 4


def test_no_length_given(llama, samples):
    n, n_plain = _check(llama, samples, _patch(llama))
    assert n == n_plain == 20  # transformers' default of 20 new tokens


def test_all_positions_without_length(llama, samples):
    _check(llama, samples, _patch(llama, positions="all", alpha=1.5, layer=2, seed=8))


# ---------------------------------------------------------------------------- early stop, bounds, misuse


def _eos_patch(vlm, alpha=60.0):
    """A patch at the last layer towards the end token: every row stops at its first steered decode step."""
    w = vlm.hf.get_output_embeddings().weight[vlm.eos_token_ids[0]].detach().float()
    return SteeringVector(w / w.norm(), layer=vlm.n_layers - 1).patch(alpha, "generated")


def test_statements_after_patch_run_when_every_row_stops_early(llama, samples):
    inputs = llama.prepare(samples)
    patch = _eos_patch(llama)
    steered, n = _own_generation(llama, inputs, patch, max_new_tokens=12)
    assert n == 2, "every row must stop at the first decode step (step 0 is unsteered by 'generated')"
    first, n_first = _own_generation(llama, inputs, max_new_tokens=1)  # the unsteered prompt pass's token
    assert n_first == 1 and steered == first and all(first)
    assert steered == steer(llama, samples, patch, max_new_tokens=12, progress=False)


def test_reads_after_the_patch_see_the_edited_decode_steps(llama, samples):
    inputs = llama.prepare(samples)
    patch = _patch(llama, layer=2, alpha=2.0)
    s = 2.0 * patch.vector.vector
    with llama.model.generate(dict(inputs), max_new_tokens=4, do_sample=False, pad_token_id=llama.pad_token_id) as tr:
        patch(llama, inputs=inputs)
        seen = list().save()
        for _step in tr.iter[0:3]:
            seen.append(llama.get_resid(2)[:, -1].clone())
    with llama.model.generate(dict(inputs), max_new_tokens=4, do_sample=False, pad_token_id=llama.pad_token_id) as tr:
        ref = list().save()
        for step in tr.iter[0:3]:
            h = llama.get_resid(2)
            if step > 0:
                llama.set_resid(2, h + s)
            ref.append(llama.get_resid(2)[:, -1].clone())
    assert torch.equal(seen[0], ref[0])  # the prompt pass: "generated" edits nothing
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(seen[1:], ref[1:], strict=True))
    assert not torch.allclose(seen[1], ref[1] - s, atol=1e-3)


def test_steps_bounds_the_edited_steps(llama, samples):
    inputs = llama.prepare(samples)
    patch = _patch(llama)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=llama.pad_token_id)
    with llama.model.generate(dict(inputs), **kw) as tracer:
        patch(llama, inputs=inputs, steps=3)
        bounded = tracer.result.save()
    with llama.model.generate(dict(inputs), **kw, min_new_tokens=6) as tracer:
        for step in tracer.iter[0:3]:
            patch(llama, step, inputs)
        looped = tracer.result.save()
    plen = inputs["input_ids"].shape[1]
    assert torch.equal(bounded[:, : plen + 3], looped[:, : plen + 3])
    with pytest.raises(SteeringError), llama.model.generate(dict(inputs), **kw):
        patch(llama, inputs=inputs, steps=0)


def test_patch_without_step_inside_a_step_loop_is_refused(llama, samples):
    inputs = llama.prepare(samples)
    patch = _patch(llama)
    with pytest.raises(SteeringError, match=r"tracer\.iter") as info:
        kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=llama.pad_token_id)
        with llama.model.generate(dict(inputs), **kw) as tracer:
            for _step in tracer.iter[1:3]:
                patch(llama, inputs=inputs)
    assert "patch(vlm, step, inputs)" in info.value.hint


def test_zoo_llava_with_images_and_its_own_generation_config():
    """The shapes-world LLaVA: images, the checkpoint's generation_config (max_new_tokens=40), rows stop early."""
    vlm = ns.zoo.load("shapes-base")
    assert vlm.hf.generation_config.max_new_tokens == 40
    samples = ns.zoo.dataset(4, style="generic", task="caption", seed=0)
    inputs = vlm.prepare(samples)
    patch = _patch(vlm, alpha=4.0, layer=2, seed=1)
    plain, n_plain = _own_generation(vlm, inputs)
    steered, _ = _own_generation(vlm, inputs, patch)
    assert n_plain < 40, "every unsteered row stops before the configured length"
    assert steered != plain
    assert steered == steer(vlm, samples, patch, max_new_tokens=40, progress=False)
    assert plain == ns.generate(vlm, samples, max_new_tokens=40, progress=False)


def test_a_bound_patch_called_without_step_also_edits_every_decode_step(llama, samples):
    inputs = llama.prepare(samples)
    patch = _patch(llama)
    bound = patch.bind(llama, inputs)
    with llama.model.generate(dict(inputs), do_sample=False, pad_token_id=llama.pad_token_id) as tracer:
        bound(llama)
        ids = tracer.result.save()
    plen = inputs["input_ids"].shape[1]
    answers = [llama.decode(trim_answer(r.tolist(), llama.eos_token_ids)) for r in ids[:, plen:]]
    assert answers == steer(llama, samples, patch, max_new_tokens=ids.shape[1] - plen, progress=False)
    assert answers != _own_generation(llama, inputs)[0]


def test_without_a_running_interleaver_the_decode_steps_are_refused_not_skipped():
    """If nnsight's running worker has no interleaver to join, nnshift raises instead of editing the prompt only."""
    import weakref

    from greenlet import getcurrent

    from nnshift.steering.steps import on_every_step

    class Worker:  # a worker of an unknown nnsight driver: no interleaver
        interleaver = None
        batch_group = None
        counts_at_start: dict = {}  # noqa: RUF012

    worker = Worker()
    me = getcurrent()
    me.mediator = weakref.ref(worker)
    try:
        with pytest.raises(SteeringError, match="interleaver") as info:
            on_every_step(lambda _s: None)
    finally:
        del me.mediator
    assert "tracer.iter" in info.value.hint and "min_new_tokens" in info.value.hint
