"""Steering patches on tiny random models: equality with plain PyTorch hooks, KV cache, composition, errors."""

import contextlib
import warnings

import pytest
import torch
from conftest import PROMPTS

import nnshift as ns
from nnshift import positions as P
from nnshift.errors import (
    HiddenSizeMismatchError,
    LayerOutOfRangeError,
    NonFiniteError,
    PositionError,
    SteeringError,
)
from nnshift.generation import generate, run_generation
from nnshift.models import load
from nnshift.models.testing import build_tiny, tiny_image
from nnshift.steering import Patch, PatchSet, SteeringVector, steer

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return load(build_tiny("llava", tmp_path_factory.mktemp("llava")), dtype="float32")


@pytest.fixture(scope="module")
def image_samples():
    return [ns.Sample(id=f"i{i}", prompt=p, image=tiny_image(i)) for i, p in enumerate(PROMPTS)]


def _vec(d, layer, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(d, generator=g) * scale, layer=layer, info={"name": f"v{seed}"})


def _positions_ids(attn):
    """Left padding: each row counted from its first token (what nnsight and HF generate do)."""
    return (attn.long().cumsum(-1) - 1).clamp(min=0)


@contextlib.contextmanager
def _hooks(vlm, edits):
    """Plain PyTorch forward hooks adding ``delta`` ([B, S, D] or broadcastable) to layer outputs."""
    handles = []
    for layer, delta in edits.items():

        def hook(_m, _i, out, delta=delta):
            if isinstance(out, tuple):
                return (out[0] + delta, *out[1:])
            return out + delta

        handles.append(vlm.layer_module(layer).register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _hf_logits(vlm, inputs, edits=None, text=True):
    kwargs = dict(inputs)
    if text:
        kwargs["position_ids"] = _positions_ids(inputs["attention_mask"])
    with _hooks(vlm, edits or {}), torch.no_grad():
        return vlm.hf(**kwargs).logits


def _nn_logits(vlm, inputs, patch=None):
    with vlm.model.trace(dict(inputs)):
        if patch is not None:
            patch(vlm, inputs=inputs)
        logits = vlm.model.output.logits.save()
    return logits


def _count_forwards(vlm):
    calls = []
    handle = vlm.layer_module(0).register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


# ---------------------------------------------------------------------------- equality with plain hooks


@pytest.mark.parametrize("where", ["all", "prompt", "last_prompt", "generated"])
def test_trace_patch_equals_plain_forward_hook(llama, samples, where):
    inputs = llama.prepare(samples)
    attn = inputs["attention_mask"]
    vec = _vec(llama.hidden_size, 1)
    alpha = 1.7
    assert torch.equal(_nn_logits(llama, inputs), _hf_logits(llama, inputs))  # same forward without edits
    mask = {
        "all": attn.bool(),
        "prompt": attn.bool(),
        "last_prompt": torch.zeros_like(attn, dtype=torch.bool).index_fill_(1, torch.tensor([attn.shape[1] - 1]), True),
        "generated": torch.zeros_like(attn, dtype=torch.bool),
    }[where]
    delta = mask.float().unsqueeze(-1) * (alpha * vec.vector)
    steered = _nn_logits(llama, inputs, vec.patch(alpha, where))
    assert torch.equal(steered, _hf_logits(llama, inputs, {1: delta}))
    if where != "generated":
        assert not torch.equal(steered, _nn_logits(llama, inputs))


def test_image_and_text_positions_equal_plain_hook(llava, image_samples):
    inputs = llava.prepare(image_samples)
    img = inputs["input_ids"] == llava.image_token_id
    assert img.sum(1).tolist() == [16, 16, 16]
    vec = _vec(llava.hidden_size, 0, seed=3)
    for where, mask in (("image", img), ("text", inputs["attention_mask"].bool() & ~img)):
        delta = mask.float().unsqueeze(-1) * vec.vector
        got = _nn_logits(llava, inputs, vec.patch(1.0, where))
        assert torch.equal(got, _hf_logits(llava, inputs, {0: delta}, text=False))


def test_alpha_zero_reproduces_unsteered_exactly(llama, samples):
    inputs = llama.prepare(samples)
    patch = _vec(llama.hidden_size, 2).patch(0.0)
    assert torch.equal(_nn_logits(llama, inputs, patch), _nn_logits(llama, inputs))
    base = generate(llama, samples, max_new_tokens=6, progress=False)
    assert steer(llama, samples, patch, max_new_tokens=6, progress=False) == base
    assert steer(llama, samples, _vec(llama.hidden_size, 2).patch(3.0), max_new_tokens=6, progress=False) != base


# ---------------------------------------------------------------------------- generation under the KV cache


def _record_inputs(vlm, layer):
    """Forward pre-hook on block ``layer``: the residual stream it receives (= the edited output of layer - 1)."""
    seen = []

    def pre(_m, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    return seen, vlm.layer_module(layer).register_forward_pre_hook(pre, with_kwargs=True)


@pytest.mark.parametrize("where", ["generated", "all"])
def test_generation_edits_every_decode_step_under_kv_cache(llama, samples, where):
    """Steered states, recorded at every step, equal an unsteered teacher-forced forward + alpha*s where selected."""
    inputs = llama.prepare(samples)  # three prompts of different lengths, left padded
    attn, n_new, layer, alpha = inputs["attention_mask"], 6, 1, 1.5
    vec = _vec(llama.hidden_size, layer, seed=5)
    patch = vec.patch(alpha, where)
    seen, handle = _record_inputs(llama, layer + 1)
    try:
        kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=llama.pad_token_id)
        with llama.model.generate(dict(inputs), **kw) as tracer:
            patch(llama, inputs=inputs)  # every step, however the length is set
            out = tracer.result.save()
    finally:
        handle.remove()
    plen = attn.shape[1]
    assert len(seen) == n_new and seen[0].shape[1] == plen and all(s.shape[1] == 1 for s in seen[1:])
    # independent reference: one unsteered forward over prompt + generated tokens, layer output recorded
    full_mask = torch.cat([attn, torch.ones(attn.shape[0], n_new, dtype=attn.dtype)], dim=1)
    ref = []
    h = llama.layer_module(layer).register_forward_hook(
        lambda _m, _i, o: ref.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        llama.hf(input_ids=out, attention_mask=full_mask, position_ids=_positions_ids(full_mask))
    h.remove()
    full = ref[0]
    s = alpha * vec.vector
    valid = attn.bool()
    prompt_expected = full[:, :plen] + (s if where == "all" else 0.0)
    # prompt states: untouched by "generated", edited at every non-padding position by "all"
    assert torch.allclose(seen[0][valid], prompt_expected[valid], atol=1e-5)
    if where == "generated":
        assert not torch.allclose(seen[0][valid], (full[:, :plen] + s)[valid], atol=1e-3)
    # every decode step edited, in every row (whatever its padding)
    for t in range(1, n_new):
        assert torch.allclose(seen[t][:, 0], full[:, plen + t - 1] + s, atol=1e-5)
        assert not torch.allclose(seen[t][:, 0], full[:, plen + t - 1], atol=1e-3)


def test_bound_prefill_delta_skips_left_padding(llama, samples):
    inputs = llama.prepare(samples)
    attn = inputs["attention_mask"]
    assert (attn == 0).any(), "the fixture must have padded rows"
    vec = _vec(llama.hidden_size, 1)
    delta = vec.patch(2.0, "all").bind(llama, inputs).edits[1].prefill
    assert delta.shape == (*attn.shape, llama.hidden_size)
    assert torch.equal(delta[attn == 0], torch.zeros(int((attn == 0).sum()), llama.hidden_size))
    assert torch.equal(delta[attn == 1], (2.0 * vec.vector).expand(int(attn.sum()), -1))
    last = vec.patch(1.0, "last_prompt").bind(llama, inputs).edits[1].prefill
    assert torch.equal(last[:, -1], vec.vector.expand(3, -1)) and not last[:, :-1].any()


def test_step_loop_and_steer_and_whole_generation_agree(llama, samples):
    inputs = llama.prepare(samples)
    patch = _vec(llama.hidden_size, 2, seed=7).patch(1.0, P.last_prompt() | P.generated())
    n = 5
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=llama.pad_token_id)
    with llama.model.generate(dict(inputs), **kw) as tracer:
        for step in tracer.iter[0:n]:
            patch(llama, step, inputs)
        looped = tracer.result.save()
    with llama.model.generate(dict(inputs), **kw) as tracer:
        patch(llama, inputs=inputs)
        whole = tracer.result.save()
    assert torch.equal(looped, whole)
    run = run_generation(llama, inputs, n, edit=patch)
    assert [
        row[: len(t)] for row, t in zip(looped[:, inputs["input_ids"].shape[1] :].tolist(), run.tokens, strict=True)
    ] == run.tokens


def test_patches_compose_additively(llama, samples):
    inputs = llama.prepare(samples)
    d = llama.hidden_size
    a, b, c = _vec(d, 1, seed=1), _vec(d, 1, seed=2), _vec(d, 3, seed=3)
    pa, pb, pc = a.patch(0.5), b.patch(-1.25), c.patch(2.0)
    # same layer: the edits add up
    both = _nn_logits(llama, inputs, pa + pb)
    summed = _nn_logits(llama, inputs, SteeringVector(0.5 * a.vector - 1.25 * b.vector, layer=1).patch(1.0))
    assert torch.allclose(both, summed, atol=1e-5)
    # several layers: equal to plain hooks on each layer; order of composition does not matter
    m = inputs["attention_mask"].bool().unsqueeze(-1).float()
    ref = _hf_logits(llama, inputs, {1: m * (0.5 * a.vector), 3: m * (2.0 * c.vector)})
    assert torch.equal(_nn_logits(llama, inputs, pc + pa), ref)
    assert torch.equal(_nn_logits(llama, inputs, PatchSet([pa, pc])), ref)
    assert len(pa + pb + pc) == 3 and (pa + pc).bind(llama, inputs).layers == [1, 3]


def test_per_sample_switch_and_alpha(llama, samples):
    inputs = llama.prepare(samples)
    vec = _vec(llama.hidden_size, 2, seed=4)
    alphas = torch.tensor([1.0, 0.0, -2.5])
    m = inputs["attention_mask"].bool().unsqueeze(-1).float()
    ref = _hf_logits(llama, inputs, {2: m * alphas.view(-1, 1, 1) * vec.vector})
    assert torch.equal(_nn_logits(llama, inputs, vec.patch(alphas)), ref)
    switched = _nn_logits(llama, inputs, vec.patch(1.0, rows=[True, False, True]))
    assert torch.equal(
        switched, _hf_logits(llama, inputs, {2: m * torch.tensor([1.0, 0.0, 1.0]).view(-1, 1, 1) * vec.vector})
    )
    assert torch.equal(switched[1], _nn_logits(llama, inputs)[1])
    base = generate(llama, samples, max_new_tokens=6, progress=False)
    on = steer(llama, samples, vec.patch(3.0), max_new_tokens=6, progress=False)
    mixed = steer(llama, samples, vec.patch(3.0, rows=[False, True, False]), max_new_tokens=6, progress=False)
    assert mixed == [base[0], on[1], base[2]] and on[1] != base[1]
    # per-sample values for all samples are sliced per batch
    sliced = steer(
        llama, samples, vec.patch(3.0, rows=[False, True, False]), max_new_tokens=6, batch_size=2, progress=False
    )
    assert sliced[0] == base[0] and sliced[2] == base[2]


def test_weights_never_change(llama, samples):
    before = {k: v.clone() for k, v in llama.hf.state_dict().items()}
    steer(
        llama, samples, _vec(llama.hidden_size, 1).patch(5.0) + _vec(llama.hidden_size, 3).patch(1.0), 4, progress=False
    )
    after = llama.hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


_REMOTE_LOCAL = """
import sys, warnings
warnings.filterwarnings("ignore")
import torch
import nnshift as ns
from nnshift.steering import SteeringVector
vlm = ns.load(sys.argv[1], dtype="float32")
inputs = vlm.prepare([ns.Sample(id=str(i), prompt=p) for i, p in enumerate(["what color is the dog", "how many"])])
torch.manual_seed(0)
patch = SteeringVector(torch.randn(32), layer=1).patch(1.0, "generated") + SteeringVector(torch.randn(32), layer=2).patch(0.5)
out = {}
for remote in (False, "local"):
    extra = {"remote": remote} if remote else {}
    with vlm.model.trace(dict(inputs), **extra):
        patch(vlm, inputs=inputs)
        logits = vlm.model.output.logits.save()
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=vlm.pad_token_id)  # decode steps on a side worker
    with vlm.model.generate(dict(inputs), **kw, **extra) as tracer:
        patch(vlm)  # bound to the generation's own inputs
        ids = tracer.result.save()
    out[remote] = (logits, ids)
with vlm.model.trace(dict(inputs)):
    plain = vlm.model.output.logits.save()
assert torch.equal(out[False][0], out["local"][0]), "trace differs"
assert torch.equal(out[False][1], out["local"][1]), "generation differs"
assert not torch.equal(out[False][0], plain), "the patch did nothing"
with vlm.model.generate(dict(inputs), **kw) as tracer:
    bare = tracer.result.save()
assert not torch.equal(out[False][1], bare), "the generation was not steered"
print("REMOTE-LOCAL-OK")
"""


def test_remote_local_serialization_gives_the_same_result(llama):
    """nnsight's remote="local" dry run (the block serialized + deserialized, as for NDIF) equals the local run.

    Run in a subprocess: the dry run re-imports nnshift, which pytest's jaxtyping import hook does not survive.
    """
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-c", _REMOTE_LOCAL, llama.name], capture_output=True, text=True, timeout=300, check=False
    )
    assert "REMOTE-LOCAL-OK" in res.stdout, res.stderr[-3000:]


# ---------------------------------------------------------------------------- bad inputs, before any forward pass


def _assert_raises_before_forward(vlm, exc, fn):
    calls, handle = _count_forwards(vlm)
    try:
        with pytest.raises(exc) as info:
            fn()
    finally:
        handle.remove()
    assert calls == [], "a forward pass ran before the error"
    assert info.value.hint
    return info.value


def _in_trace(vlm, inputs, patch):
    def run():
        with vlm.model.trace(dict(inputs)):
            patch(vlm, inputs=inputs)
            vlm.model.output.logits.save()

    return run


def test_bad_inputs_raise_before_any_forward(llama, llava, samples, image_samples):
    inputs = llama.prepare(samples)
    d = llama.hidden_size
    cases = [
        (HiddenSizeMismatchError, SteeringVector(torch.ones(d + 1), layer=1).patch()),
        (LayerOutOfRangeError, _vec(d, 4).patch()),
        (LayerOutOfRangeError, _vec(d, -5).patch()),
        (PositionError, _vec(d, 1).patch(1.0, "image")),  # text-only prompt: no image token
        (PositionError, _vec(d, 1).patch(torch.ones(5))),  # 5 per-sample values for 3 samples
    ]
    for exc, patch in cases:
        _assert_raises_before_forward(llama, exc, _in_trace(llama, inputs, patch))
        _assert_raises_before_forward(llama, exc, lambda patch=patch: steer(llama, samples, patch, 3, progress=False))
    # image positions on the LLaVA model, text-only samples
    patch = _vec(llava.hidden_size, 0).patch(1.0, P.image())
    _assert_raises_before_forward(llava, PositionError, lambda: steer(llava, samples, patch, 3, progress=False))
    txt = llava.prepare(samples)
    _assert_raises_before_forward(llava, PositionError, _in_trace(llava, txt, patch))
    # token_of_interest cannot be steered; a vector that turned NaN after construction is refused at bind time
    with pytest.raises(PositionError):
        _vec(d, 1).patch(1.0, P.token_of_interest("dog")).bind(llama, inputs)
    vec = _vec(d, 1)
    patch = vec.patch()
    vec.vector[3] = float("nan")
    _assert_raises_before_forward(llama, NonFiniteError, _in_trace(llama, inputs, patch))


def test_bad_vectors_and_arguments():
    with pytest.raises(NonFiniteError):
        SteeringVector(torch.tensor([1.0, float("nan")]), layer=0)
    with pytest.raises(NonFiniteError):
        Patch(torch.tensor([float("inf"), 1.0]), layer=0)
    with pytest.raises(NonFiniteError):
        SteeringVector(torch.ones(4), layer=0).patch(float("nan"))
    with pytest.raises(SteeringError):
        Patch(torch.ones(4))  # no layer anywhere
    with pytest.raises(SteeringError):
        Patch(torch.ones(4), layer=0, alpha=torch.ones(3), rows=[True, False])
    with pytest.raises(PositionError):
        SteeringVector(torch.ones(4), layer=0).patch(1.0, "everywhere")


def test_patch_outside_a_trace_is_a_clear_error(llama):
    with pytest.raises(SteeringError, match="outside an nnsight trace"):
        _vec(llama.hidden_size, 1).patch()(llama)


def test_spec_and_repr_are_informative(llama):
    vec = _vec(llama.hidden_size, 1)
    patch = vec.patch(0.5, "generated") + vec.patch(torch.tensor([1.0, 2.0]), layer=2)
    spec = patch.spec()
    assert spec[0]["positions"] == {"kind": "Generated", "reduce": None} and spec[1]["alpha"] == [1.0, 2.0]
    assert "layer=1" in repr(patch) and "generated" in repr(patch)


def test_scalar_rows_multiplier(llama, samples):
    vec = _vec(llama.hidden_size, 1)
    patch = Patch(vec, 2.0, rows=0.5)
    assert "rows=0.5" in repr(patch) and patch.scale == 1.0 and patch.batch_size is None
    inputs = llama.prepare(samples)
    assert torch.equal(_nn_logits(llama, inputs, patch), _nn_logits(llama, inputs, vec.patch(1.0)))
    assert patch.select_rows([0, 2]).rows == 0.5
