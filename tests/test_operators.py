"""Patch operators (add, project_out, clamp, norm) on tiny random models, checked against the hand-written formulas.

The edited residual after layer ``L`` is recorded as the input of block ``L + 1`` (a plain forward pre-hook, for
recording only) and compared with the formula applied to the unsteered state of layer ``L`` (an edit at ``L`` does
not change the state of ``L`` itself, at the prompt pass nor at later decode steps).
"""

import contextlib
import json
import warnings

import pytest
import torch
from conftest import PROMPTS

import nnshift as ns
from nnshift import positions as P
from nnshift.errors import ArtifactError, HiddenSizeMismatchError, NonFiniteError, SteeringError
from nnshift.generation import generate, run_generation
from nnshift.models import load
from nnshift.steering import OPS, ConceptGate, Patch, PatchSet, SteeringVector, steer
from nnshift.steering.operators import apply_op

warnings.filterwarnings("ignore")

LAYER = 1
VALUE = 0.75  # the clamp value used throughout


@pytest.fixture(scope="module")
def inputs(llama, samples):
    return llama.prepare(samples)


def _vec(d, layer=LAYER, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(d, generator=g) * scale, layer=layer, info={"name": f"v{seed}"})


def _ref(h, op, w, s, value=None):
    """The hand-written formula: ``h`` [..., D], per-position weights ``w`` [...] (float64 for an exact reference)."""
    h, w, s = h.double(), torch.as_tensor(w, dtype=torch.float64), s.double()
    u = s / s.norm()
    w = w.unsqueeze(-1) if w.ndim else w
    if op == "add":
        out = h + w * s
    elif op == "project_out":
        out = h - w * (h @ u).unsqueeze(-1) * u
    elif op == "clamp":
        out = h + w * (value - h @ u).unsqueeze(-1) * u
    else:
        out = h + w * h.norm(dim=-1, keepdim=True) * u
    return out.float()


def _kw(op):
    return {"op": op, "value": VALUE if op == "clamp" else None}


@contextlib.contextmanager
def _record(vlm, layer):
    """Forward pre-hook on block ``layer``: the residual stream it receives at each call (= the edited output of layer - 1)."""
    seen = []

    def pre(_m, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = vlm.layer_module(layer).register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def _trace(vlm, inputs, patch=None, layer=LAYER):
    """(logits, the unedited state of ``layer``, the edited state = the input of ``layer + 1``) of one trace."""
    h = None
    with _record(vlm, layer + 1) as seen, vlm.model.trace(dict(inputs)):
        if patch is None:
            h = vlm.get_resid(layer).save()
        else:
            patch(vlm, inputs=inputs)
        logits = vlm.model.output.logits.save()
    return logits, h, seen[0]


def _weights(inputs, where, scale):
    attn = inputs["attention_mask"].bool()
    mask = P.as_selector(where).prefill_mask(attn.long(), torch.zeros_like(attn))
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return mask.float() * (scale.view(-1, 1) if scale.ndim else scale)


# ---------------------------------------------------------------------------- formulas, prompt pass


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("where", ["all", "last_prompt"])
def test_each_op_equals_its_formula_in_a_trace(llama, inputs, op, where):
    _, h, _ = _trace(llama, inputs)
    vec = _vec(llama.hidden_size)
    alpha = torch.tensor([1.0, 0.5, -0.8])  # per sample
    _, _, edited = _trace(llama, inputs, vec.patch(alpha, where, **_kw(op)))
    expected = _ref(h, op, _weights(inputs, where, alpha), vec.vector, VALUE)
    assert torch.allclose(edited, expected, atol=1e-5, rtol=1e-5)
    changed = _weights(inputs, where, alpha) != 0
    assert not torch.allclose(edited[changed], h[changed], atol=1e-3)
    assert torch.equal(edited[~changed], h[~changed])  # padding and unselected positions untouched, exactly


def test_full_strength_ops_do_what_they_say(llama, inputs):
    _, h, _ = _trace(llama, inputs)
    vec = _vec(llama.hidden_size, seed=3)
    u = vec.vector / vec.vector.norm()
    valid = inputs["attention_mask"].bool()
    _, _, ablated = _trace(llama, inputs, vec.patch(1.0, op="project_out"))
    assert (ablated[valid] @ u).abs().max() < 1e-5 < (h[valid] @ u).abs().min()
    _, _, clamped = _trace(llama, inputs, vec.patch(1.0, op="clamp", value=VALUE))
    assert torch.allclose(clamped[valid] @ u, torch.full((int(valid.sum()),), VALUE), atol=1e-5)
    # the part orthogonal to u is kept by both
    orth = h[valid] - (h[valid] @ u).unsqueeze(-1) * u
    assert torch.allclose(ablated[valid], orth, atol=1e-5)
    _, _, normed = _trace(llama, inputs, vec.patch(0.5, op="norm"))
    assert torch.allclose(normed[valid] - h[valid], 0.5 * h[valid].norm(dim=-1, keepdim=True) * u, atol=1e-5)


def test_apply_op_matches_the_formula_directly():
    g = torch.Generator().manual_seed(0)
    h, s, w = torch.randn(2, 5, 8, generator=g), torch.randn(8, generator=g), torch.rand(2, 5, generator=g)
    for op in OPS:
        vec = s if op == "add" else s / s.norm()
        got = apply_op(h, op, w, vec, VALUE if op == "clamp" else None)
        assert torch.allclose(got, _ref(h, op, w, s, VALUE), atol=1e-6)
        assert torch.equal(apply_op(h, op, 0.0, vec, VALUE if op == "clamp" else None), h)
    half = apply_op(h.to(torch.bfloat16), "norm", w, s / s.norm())
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize("op", OPS)
def test_alpha_zero_is_unsteered_exactly(llama, samples, inputs, op):
    plain, _, _ = _trace(llama, inputs)
    gate = ConceptGate(torch.randn(3, llama.hidden_size, generator=torch.Generator().manual_seed(1)), 0)
    patch = _vec(llama.hidden_size).patch(0.0, **_kw(op)) + _vec(llama.hidden_size, seed=2).patch(
        0.0, "generated", gate=gate, **_kw(op)
    )
    logits, _, _ = _trace(llama, inputs, patch)
    assert torch.equal(logits, plain)
    base = generate(llama, samples, max_new_tokens=5, progress=False)
    assert steer(llama, samples, patch, max_new_tokens=5, progress=False) == base


def test_add_op_keeps_the_delta_fast_path(llama, inputs):
    vec = _vec(llama.hidden_size)
    bound = vec.patch(1.5, op="add").bind(llama, inputs)
    assert bound.edits[LAYER].ops == [] and bound.edits[LAYER].prefill is not None
    gated = vec.patch(1.5, gate=ConceptGate(torch.randn(2, llama.hidden_size), 0)).bind(llama, inputs)
    assert gated.edits[LAYER].prefill is None and len(gated.edits[LAYER].ops) == 1


def test_ops_bound_without_inputs_resolve_from_the_traced_shape(llama):
    """No inputs bound (no padding known): the prompt weights come from the traced shape, as for additions."""
    one = llama.prepare([ns.Sample(id="0", prompt=PROMPTS[2])])  # one row, no padding
    patch = _vec(llama.hidden_size, seed=6).patch(0.8, "last_prompt", op="clamp", value=0.3) + _vec(
        llama.hidden_size, seed=7
    ).patch(0.5, op="norm")
    bound = patch.bind(llama)
    assert bound.edits[LAYER].ops[0].lazy is not None and bound.edits[LAYER].ops[0].prefill is None
    with llama.model.trace(dict(one)):
        bound(llama)
        lazy = llama.model.output.logits.save()
    assert torch.equal(lazy, _trace(llama, one, patch)[0])


# ---------------------------------------------------------------------------- composition


def test_ops_on_one_layer_apply_in_order(llama, inputs):
    _, h, _ = _trace(llama, inputs)
    d = llama.hidden_size
    a, s = _vec(d, seed=1), _vec(d, seed=2)
    w = _weights(inputs, "all", 1.0)
    add, ablate = a.patch(0.7), s.patch(1.0, op="project_out")
    _, _, first_add = _trace(llama, inputs, add + ablate)
    expected = _ref(_ref(h, "add", 0.7 * w, a.vector), "project_out", w, s.vector)
    assert torch.allclose(first_add, expected, atol=1e-5)
    _, _, first_ablate = _trace(llama, inputs, ablate + add)
    expected = _ref(_ref(h, "project_out", w, s.vector), "add", 0.7 * w, a.vector)
    assert torch.allclose(first_ablate, expected, atol=1e-5)
    assert not torch.allclose(first_add, first_ablate, atol=1e-3)
    # additive patches in a mixed layer: sequential == summed, up to float rounding
    b = _vec(d, seed=4)
    _, _, seq = _trace(llama, inputs, a.patch(0.5) + b.patch(-1.0) + s.patch(0.3, op="norm"))
    summed = SteeringVector(0.5 * a.vector - 1.0 * b.vector, layer=LAYER).patch(1.0) + s.patch(0.3, op="norm")
    assert torch.allclose(seq, _trace(llama, inputs, summed)[2], atol=1e-5)


def test_ops_on_several_layers(llama, inputs):
    d = llama.hidden_size
    p1, p3 = _vec(d, seed=1).patch(1.0, op="project_out"), _vec(d, layer=3, seed=2).patch(0.2, op="norm")
    both = PatchSet([p3, p1])
    assert both.bind(llama, inputs).layers == [1, 3]
    _, h1, _ = _trace(llama, inputs)
    _, _, e1 = _trace(llama, inputs, both)
    assert torch.allclose(e1, _ref(h1, "project_out", _weights(inputs, "all", 1.0), p1.vector.vector), atol=1e-5)
    assert not torch.equal(_trace(llama, inputs, both)[0], _trace(llama, inputs, p1)[0])


# ---------------------------------------------------------------------------- generation


@pytest.mark.parametrize("op", ["project_out", "clamp", "norm"])
def test_every_decode_step_is_edited_by_the_formula(llama, inputs, op):
    attn, n_new = inputs["attention_mask"], 5
    vec = _vec(llama.hidden_size, seed=5)
    alpha = torch.tensor([1.0, 0.0, 0.6])
    patch = vec.patch(alpha, P.last_prompt() | P.generated(), **_kw(op))
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=llama.pad_token_id)
    with _record(llama, LAYER + 1) as seen, llama.model.generate(dict(inputs), **kw) as tracer:
        patch(llama, inputs=inputs)
        out = tracer.result.save()
    plen = attn.shape[1]
    assert len(seen) == n_new
    full_mask = torch.cat([attn, torch.ones(attn.shape[0], n_new, dtype=attn.dtype)], dim=1)
    ref = []
    hook = llama.layer_module(LAYER).register_forward_hook(
        lambda _m, _i, o: ref.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        llama.hf(input_ids=out, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0))
    hook.remove()
    full = ref[0]
    w_prompt = _weights(inputs, "last_prompt", alpha)
    assert torch.allclose(seen[0], _ref(full[:, :plen], op, w_prompt, vec.vector, VALUE), atol=1e-5)
    for t in range(1, n_new):
        h_t = full[:, plen + t - 1]
        assert torch.allclose(seen[t][:, 0], _ref(h_t, op, alpha, vec.vector, VALUE), atol=1e-5)
        assert torch.allclose(seen[t][1, 0], h_t[1], atol=1e-5)  # alpha 0 for sample 1 (KV cache vs full forward)
        assert (seen[t][0, 0] - h_t[0]).norm() > 1e-4  # sample 0 edited (float noise is ~1e-7)


def test_step_loop_and_steer_agree_for_ops(llama, samples, inputs):
    patch = _vec(llama.hidden_size, seed=7).patch(1.0, op="clamp", value=2.0) + _vec(llama.hidden_size, 2).patch(
        0.3, "generated", op="norm"
    )
    n = 4
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=llama.pad_token_id)
    with llama.model.generate(dict(inputs), **kw) as tracer:
        for step in tracer.iter[0:n]:
            patch(llama, step, inputs)
        looped = tracer.result.save()
    with llama.model.generate(dict(inputs), **kw) as tracer:
        patch(llama, inputs=inputs)
        whole = tracer.result.save()
    assert torch.equal(looped, whole)
    run = run_generation(llama, inputs, n, edit=patch.bind(llama, inputs))
    gen = looped[:, inputs["input_ids"].shape[1] :].tolist()
    assert [row[: len(t)] for row, t in zip(gen, run.tokens, strict=True)] == run.tokens
    assert steer(llama, samples, patch, n, progress=False) != generate(llama, samples, max_new_tokens=n, progress=False)


def test_per_sample_rows_are_sliced_per_batch(llama, samples):
    patch = _vec(llama.hidden_size, seed=3).patch(1.0, op="project_out", rows=[True, False, True])
    base = generate(llama, samples, max_new_tokens=5, progress=False)
    whole = steer(llama, samples, patch, max_new_tokens=5, progress=False)
    assert whole[1] == base[1]
    assert steer(llama, samples, patch, max_new_tokens=5, batch_size=2, progress=False) == whole


# ---------------------------------------------------------------------------- save / load


def test_save_load_round_trip_with_ops_and_gate(llama, inputs, tmp_path):
    d = llama.hidden_size
    gate = ConceptGate(torch.randn(4, d, generator=torch.Generator().manual_seed(2)), 1, "cosine", threshold=0.1)
    ps = (
        _vec(d, seed=1).patch(torch.tensor([1.0, 0.5, 0.0]), op="clamp", value=-0.5)
        + _vec(d, seed=2).patch(2.0, "generated", gate=gate)
        + _vec(d, layer=2, seed=3).patch(0.2, op="norm", rows=[True, False, True])
    )
    path = ps.save(tmp_path / "ops")
    doc = json.loads((path / "patch.json").read_text())
    assert doc["format_version"] == 3 and [e["op"] for e in doc["doc"]["patches"]] == ["clamp", "add", "norm"]
    back = PatchSet.load(path)
    assert back.spec() == ps.spec() and back.patches[1].gate == gate and back.patches[0].value == -0.5
    assert torch.equal(_trace(llama, inputs, back)[0], _trace(llama, inputs, ps)[0])
    one = Patch.load(ps.patches[1].save(tmp_path / "gated"))
    assert one.gate == gate and one.gate is not gate
    # a plain patch is still written as version 2 (readable by older versions) and loads as op="add"
    plain = _vec(d).patch(1.0).save(tmp_path / "plain")
    assert json.loads((plain / "patch.json").read_text())["format_version"] == 2
    assert Patch.load(plain).op == "add" and Patch.load(plain).gate is None


def test_legacy_plain_json_patch_loads_as_an_addition(llama, inputs, tmp_path):
    """A format-1 folder (plain JSON with ``format``, no manifest, no op keys: what the first Patch.save wrote)
    still loads, as op="add" without a gate."""
    from safetensors.torch import save_file

    vec = _vec(llama.hidden_size, seed=8)
    folder = tmp_path / "v1"
    folder.mkdir()
    save_file({"p0.vector": vec.vector.contiguous()}, str(folder / "patch.safetensors"))
    entry = {
        "layer": LAYER,
        "alpha": 1.5,
        "rows": None,
        "positions": {"kind": "All"},
        "vector": {"tensor": "p0.vector", "layer": LAYER, "method": "given", "info": {}},
    }
    doc = {"format": "nnshift.patch", "format_version": 1, "kind": "Patch", "patches": [entry], "provenance": {}}
    (folder / "patch.json").write_text(json.dumps(doc))
    back = Patch.load(folder)
    assert back.op == "add" and back.value is None and back.gate is None
    assert torch.equal(_trace(llama, inputs, back)[0], _trace(llama, inputs, vec.patch(1.5))[0])


def test_bad_saved_op_is_a_clear_error(llama, tmp_path):
    path = _vec(llama.hidden_size).patch(1.0, op="norm").save(tmp_path / "p")
    raw = json.loads((path / "patch.json").read_text())
    raw["doc"]["patches"][0]["op"] = "rotate"
    from safetensors.torch import load_file

    from nnshift.artifacts import write_artifact

    write_artifact(tmp_path / "q", "patch", 3, load_file(path / "patch.safetensors"), raw["doc"])
    with pytest.raises(ArtifactError) as info:
        Patch.load(tmp_path / "q")
    assert "rotate" in str(info.value) and info.value.hint


# ---------------------------------------------------------------------------- errors, before any forward


def test_bad_operator_arguments():
    v = torch.randn(8)
    for kwargs, match in (
        ({"op": "rotate"}, "unknown patch operator"),
        ({"op": "clamp"}, "needs a numeric value"),
        ({"op": "add", "value": 1.0}, "only used by"),
        ({"gate": ConceptGate(torch.randn(2, 4), 0)}, "size 4"),
    ):
        with pytest.raises(SteeringError, match=match) as info:
            Patch(v, 1.0, layer=0, **kwargs)
        assert info.value.hint
    with pytest.raises(NonFiniteError):
        Patch(v, 1.0, layer=0, op="clamp", value=float("nan"))
    for op in ("project_out", "clamp", "norm"):
        with pytest.raises(SteeringError, match="vector is zero"):
            Patch(torch.zeros(8), layer=0, **_kw(op))
    assert Patch(torch.zeros(8), layer=0).op == "add"  # a zero additive vector stays allowed (a no-op)


def test_gate_of_another_size_fails_at_bind_before_any_forward(llama, inputs):
    calls = []
    handle = llama.layer_module(0).register_forward_hook(lambda *_: calls.append(1))
    patch = Patch(torch.randn(llama.hidden_size), layer=1)
    patch.gate = ConceptGate(torch.randn(2, llama.hidden_size + 1), 0)  # bypassing the constructor's check
    try:
        with pytest.raises(HiddenSizeMismatchError):
            patch.bind(llama, inputs)
    finally:
        handle.remove()
    assert calls == []


def test_spec_and_repr_name_the_operator():
    p = Patch(torch.ones(4), 0.5, layer=0, op="clamp", value=1.0, gate=ConceptGate(torch.eye(4), 2))
    assert p.spec()["op"] == "clamp" and p.spec()["value"] == 1.0 and p.spec()["gate"]["index"] == 2
    assert "op='clamp'" in repr(p) and "ConceptGate(index=2" in repr(p)
    assert p.select_rows([0]).op == "clamp" and p.with_alpha(2.0).gate is p.gate
    assert SteeringVector(torch.ones(4), layer=0).patch(1.0, op="norm").op == "norm"


# ---------------------------------------------------------------------------- NDIF serialisation, TransformerLens

_REMOTE_LOCAL = """
import sys, warnings
warnings.filterwarnings("ignore")
import torch
import nnshift as ns
from nnshift.generation import ensure_remote_ready
from nnshift.steering import ConceptGate, SteeringVector
ensure_remote_ready()  # what ns.steer does for remote runs; your own remote traces need it too
vlm = ns.load(sys.argv[1], dtype="float32")
samples = [ns.Sample(id=str(i), prompt=p) for i, p in enumerate(["what color is the dog", "how many"])]
inputs = vlm.prepare(samples)
g = torch.Generator().manual_seed(0)
vec = lambda layer: SteeringVector(torch.randn(32, generator=g), layer=layer)
gate = ConceptGate(torch.randn(3, 32, generator=g), 1)
patch = (
    vec(1).patch(1.0, op="project_out")
    + vec(1).patch(torch.tensor([0.5, 1.0]), "generated", op="clamp", value=0.3)
    + vec(2).patch(0.4, op="norm")
    + vec(2).patch(3.0, gate=gate)
)
out = {}
for remote in (False, "local"):
    extra = {"remote": remote} if remote else {}
    with vlm.model.trace(dict(inputs), **extra):
        patch(vlm, inputs=inputs)
        logits = vlm.model.output.logits.save()
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=vlm.pad_token_id)
    with vlm.model.generate(dict(inputs), **kw, **extra) as tracer:
        patch(vlm)
        ids = tracer.result.save()
    out[remote] = (logits, ids, ns.steer(vlm, samples, patch, 4, progress=False, **extra))
with vlm.model.trace(dict(inputs)):
    plain = vlm.model.output.logits.save()
assert torch.equal(out[False][0], out["local"][0]), "trace differs"
assert torch.equal(out[False][1], out["local"][1]), "generation differs"
assert out[False][2] == out["local"][2], "steer differs"
assert not torch.equal(out[False][0], plain), "the patch did nothing"
print("REMOTE-LOCAL-OK")
"""


def test_remote_local_serialization_gives_the_same_result(llama):
    """nnsight's remote="local" dry run (the body serialised and run as on NDIF) equals the local run, for every op."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    res = subprocess.run(
        [sys.executable, "-c", _REMOTE_LOCAL, llama.name],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=root,
        env=env,
    )
    assert "REMOTE-LOCAL-OK" in res.stdout, res.stderr[-3000:]


@pytest.fixture(scope="module")
def bridge(llama):
    tl_bridge = pytest.importorskip("transformer_lens.model_bridge")
    b = tl_bridge.TransformerBridge.boot_transformers(
        llama.name, device="cpu", dtype=torch.float32, tokenizer=llama.tokenizer
    )
    b.eval()
    return b


def _tl_patch(d):
    g = torch.Generator().manual_seed(4)
    gate = ConceptGate(torch.randn(3, d, generator=g), 0)
    return (
        SteeringVector(torch.randn(d, generator=g), layer=1).patch(0.8, op="project_out")
        + SteeringVector(torch.randn(d, generator=g), layer=1).patch(torch.tensor([0.5, 0.0, 1.0]), op="norm")
        + SteeringVector(torch.randn(d, generator=g), layer=2).patch(1.0, "generated", op="clamp", value=-0.2)
        + SteeringVector(torch.randn(d, generator=g), layer=2).patch(2.0, gate=gate)
    )


@pytest.mark.parametrize("kv_cache", [True, False])
def test_tl_hooks_equal_the_nnsight_path_for_ops(llama, inputs, bridge, kv_cache):
    eager = load(llama.name, dtype="float32", attn_implementation="eager")
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    patch = _tl_patch(llama.hidden_size)
    valid = attn.bool()
    with torch.no_grad():
        hooked = bridge.run_with_hooks(ids, attention_mask=attn, fwd_hooks=patch.tl_hooks(bridge, attention_mask=attn))
        plain = bridge(ids, attention_mask=attn)
    assert torch.allclose(hooked[valid], _trace(eager, inputs, patch)[0][valid], atol=1e-5)
    assert not torch.allclose(hooked[valid], plain[valid], atol=1e-4)
    n = 5
    run = run_generation(eager, inputs, n, edit=patch.bind(eager, inputs))
    with patch.hooked(bridge, attention_mask=attn):
        out = bridge.generate(
            ids,
            attention_mask=attn,
            max_new_tokens=n,
            do_sample=False,
            stop_at_eos=False,
            use_past_kv_cache=kv_cache,
            verbose=False,
            return_type="tokens",
        )
    tl_tokens = out[:, ids.shape[1] :].tolist()
    assert [row[: len(t)] for row, t in zip(tl_tokens, run.tokens, strict=True)] == run.tokens
    assert sum(len(t) for t in run.tokens) > 0
