"""Concept gates: the gate decided from the current hidden state, per sample and position, at every step, for every op."""

import warnings

import pytest
import torch

from nnshift import positions as P
from nnshift.concepts import ConceptDictionary
from nnshift.errors import NonFiniteError, SteeringError
from nnshift.generation import generate
from nnshift.steering import OPS, ConceptGate, Patch, SteeringVector, fine, steer

warnings.filterwarnings("ignore")

LAYER = 1


@pytest.fixture(scope="module")
def inputs(llama, samples):
    return llama.prepare(samples)


def _resid(vlm, inputs, patch=None):
    """(unedited state of LAYER when no patch, else the edited one = the input of block LAYER + 1)."""
    seen = []
    handle = vlm.layer_module(LAYER + 1).register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone()),
        with_kwargs=True,
    )
    try:
        with vlm.model.trace(dict(inputs)):
            if patch is not None:
                patch(vlm, inputs=inputs)
            vlm.model.output.logits.save()
    finally:
        handle.remove()
    return seen[0]


def _cos(h, u):
    """Cosines ``[..., K]`` of the rows of ``h`` with the concepts ``u``, in float64 (the hand reference)."""
    h, u = h.double(), u.double()
    return (h / h.norm(dim=-1, keepdim=True)) @ (u / u.norm(dim=-1, keepdim=True)).T


def _ref(h, op, w, s, value=None):
    h, w, s = h.double(), w.double().unsqueeze(-1), s.double()
    u = s / s.norm()
    return {
        "add": lambda: h + w * s,
        "project_out": lambda: h - w * (h @ u).unsqueeze(-1) * u,
        "clamp": lambda: h + w * (value - h @ u).unsqueeze(-1) * u,
        "norm": lambda: h + w * h.norm(dim=-1, keepdim=True) * u,
    }[op]().float()


def _concepts(h):
    """Concepts taken from the states themselves: the last prompt position of each sample (gate 0 is open there)."""
    return h[:, -1].clone()


# ---------------------------------------------------------------------------- the gate itself


def test_gate_mask_equals_the_hand_rule():
    g = torch.Generator().manual_seed(0)
    u, h = torch.randn(4, 16, generator=g), torch.randn(3, 7, 16, generator=g)
    cos = _cos(h, u)
    for i in range(4):
        assert torch.equal(ConceptGate(u, i).mask(h), cos.argmax(-1) == i)
        assert torch.equal(ConceptGate(u, i, "cosine", 0.2).mask(h), cos[..., i] > 0.2)
        assert torch.equal(ConceptGate(u, i, threshold=0.3).mask(h), (cos.argmax(-1) == i) & (cos[..., i] > 0.3))
    # the K gates of "assign" partition the positions
    assert torch.equal(sum(ConceptGate(u, i).mask(h).long() for i in range(4)), torch.ones(3, 7, dtype=torch.long))
    assert ConceptGate(u, -1).index == 3 and ConceptGate(u * 5.0, 2) != ConceptGate(u, 2)


def test_gate_from_dictionary():
    u = torch.randn(3, 8)
    dico = ConceptDictionary.from_concepts(u)
    gate = ConceptGate.from_dictionary(dico, 2, "cosine", threshold=0.0)
    assert gate == ConceptGate(u, 2, "cosine", 0.0) and gate.k == 3 and gate.dim == 8
    assert gate.spec() == {"index": 2, "rule": "cosine", "threshold": 0.0, "k": 3}
    with pytest.raises(SteeringError):
        ConceptGate.from_dictionary(object(), 0)


def test_bad_gates_are_clear_errors():
    u = torch.randn(3, 8)
    for args, kwargs, match in (
        ((torch.zeros(0, 8), 0), {}, r"\[K, D\]"),
        ((u, 3), {}, "out of range"),
        ((u, 0), {"rule": "nearest"}, "unknown gate rule"),
        ((u, 0), {"rule": "cosine"}, "needs a threshold"),
        ((u, 0), {"rule": "cosine", "threshold": 1.5}, r"\[-1, 1\]"),
        ((torch.cat([u, torch.zeros(1, 8)]), 0), {}, "zero norm"),
    ):
        with pytest.raises(SteeringError, match=match) as info:
            ConceptGate(*args, **kwargs)
        assert info.value.hint
    with pytest.raises(NonFiniteError):
        ConceptGate(torch.full((2, 8), float("nan")), 0)


# ---------------------------------------------------------------------------- gated patches in the trace


@pytest.mark.parametrize("op", OPS)
def test_gated_patch_edits_only_where_the_concept_is_active(llama, inputs, op):
    h = _resid(llama, inputs)
    u = _concepts(h)
    gate = ConceptGate(u, 0)
    vec = SteeringVector(torch.randn(llama.hidden_size, generator=torch.Generator().manual_seed(1)), layer=LAYER)
    value = 0.5 if op == "clamp" else None
    edited = _resid(llama, inputs, vec.patch(1.5, op=op, value=value, gate=gate))
    valid = inputs["attention_mask"].bool()
    open_ = (_cos(h, u).argmax(-1) == 0) & valid
    assert open_[0, -1] and not open_[1, -1] and not open_[2, -1]
    assert 0 < int(open_.sum()) < int(valid.sum())
    assert torch.allclose(edited, _ref(h, op, 1.5 * open_.float(), vec.vector, value), atol=1e-5)
    assert torch.equal(edited[~open_], h[~open_])  # closed positions untouched, exactly
    assert not torch.allclose(edited[open_], h[open_], atol=1e-4)


def test_gate_sees_the_state_left_by_the_patches_before_it(llama, inputs):
    """A gate on the second patch decides from the output of the first one (patches apply in order)."""
    h = _resid(llama, inputs)
    u = _concepts(h)
    push = SteeringVector(50.0 * u[1] / u[1].norm(), layer=LAYER)  # pushes every position towards concept 1
    gate = ConceptGate(u, 1)
    vec = SteeringVector(torch.randn(llama.hidden_size, generator=torch.Generator().manual_seed(2)), layer=LAYER)
    valid = inputs["attention_mask"].bool().float()
    edited = _resid(llama, inputs, push.patch(1.0) + vec.patch(1.0, gate=gate))
    pushed = h + valid.unsqueeze(-1) * push.vector
    open_ = (_cos(pushed, u).argmax(-1) == 1).float() * valid
    assert bool((open_ == valid).all())  # every real position now nearest to concept 1
    assert torch.allclose(edited, pushed + open_.unsqueeze(-1) * vec.vector, atol=1e-4)


def test_closed_and_open_gates(llama, samples, inputs):
    vec = SteeringVector(torch.randn(llama.hidden_size, generator=torch.Generator().manual_seed(3)), layer=LAYER)
    never = ConceptGate(torch.randn(2, llama.hidden_size), 0, "cosine", threshold=1.0)  # cos > 1 never holds
    always = ConceptGate(torch.randn(1, llama.hidden_size), 0)  # one concept: always the nearest
    h = _resid(llama, inputs)
    assert torch.equal(_resid(llama, inputs, vec.patch(2.0, gate=never)), h)
    assert torch.allclose(_resid(llama, inputs, vec.patch(2.0, gate=always)), _resid(llama, inputs, vec.patch(2.0)))
    base = generate(llama, samples, max_new_tokens=5, progress=False)
    assert steer(llama, samples, vec.patch(30.0, gate=never), 5, progress=False) == base
    assert steer(llama, samples, vec.patch(30.0, gate=always), 5, progress=False) == steer(
        llama, samples, vec.patch(30.0), 5, progress=False
    )


def test_gate_is_decided_at_every_decode_step(llama, inputs):
    attn, n_new = inputs["attention_mask"], 5
    h = _resid(llama, inputs)
    u = _concepts(h)
    gate = ConceptGate(u, 2, "cosine", threshold=0.2)
    vec = SteeringVector(torch.randn(llama.hidden_size, generator=torch.Generator().manual_seed(5)), layer=LAYER)
    patch = vec.patch(1.0, P.generated(), op="norm", gate=gate)
    seen = []
    handle = llama.layer_module(LAYER + 1).register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone()),
        with_kwargs=True,
    )
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=llama.pad_token_id)
    try:
        with llama.model.generate(dict(inputs), **kw) as tracer:
            patch(llama, inputs=inputs)
            out = tracer.result.save()
    finally:
        handle.remove()
    plen = attn.shape[1]
    full_mask = torch.cat([attn, torch.ones(attn.shape[0], n_new, dtype=attn.dtype)], dim=1)
    ref = []
    hook = llama.layer_module(LAYER).register_forward_hook(lambda _m, _i, o: ref.append(o))
    with torch.no_grad():
        llama.hf(input_ids=out, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0))
    hook.remove()
    full = ref[0][0] if isinstance(ref[0], tuple) else ref[0]
    opened = []
    for t in range(1, n_new):
        h_t = full[:, plen + t - 1]
        open_t = _cos(h_t, u)[:, 2] > 0.2
        opened.append(open_t)
        assert torch.allclose(seen[t][:, 0], _ref(h_t, "norm", open_t.float(), vec.vector), atol=1e-5)
    opened = torch.stack(opened)
    assert bool(opened.any()) and not bool(opened.all())  # decided per sample and step


def test_fine_vector_gated_on_its_source_concept(llama, inputs):
    """The main use: u_j - u_i applied only where concept i is active."""
    h = _resid(llama, inputs)
    dico = ConceptDictionary.from_concepts(_concepts(h))
    patch = fine(dico, 0, 1, layer=LAYER).patch(1.0, gate=ConceptGate.from_dictionary(dico, 0))
    edited = _resid(llama, inputs, patch)
    open_ = (_cos(h, dico.concepts).argmax(-1) == 0) & inputs["attention_mask"].bool()
    expected = h + open_.float().unsqueeze(-1) * (dico.concepts[1] - dico.concepts[0])
    assert torch.allclose(edited, expected, atol=1e-5)
    assert isinstance(patch, Patch) and patch.gate.index == 0
