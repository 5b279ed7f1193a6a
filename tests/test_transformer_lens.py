"""The same patch as TransformerLens hooks (transformer-lens 4.x TransformerBridge) equals the nnsight patch.

Both libraries load the same tiny random model from a local folder, offline: nnshift through nnsight,
transformer-lens through ``TransformerBridge.boot_transformers(folder)`` (eager attention on both sides).
"""

import warnings
from typing import ClassVar

import pytest
import torch

import nnshift as ns
from nnshift import positions as P
from nnshift.errors import HiddenSizeMismatchError, LayerOutOfRangeError, PositionError
from nnshift.generation import run_generation
from nnshift.models import load
from nnshift.models.testing import build_tiny
from nnshift.steering import SteeringVector
from nnshift.steering.tl import TLHook, resid_post_name

warnings.filterwarnings("ignore")
tl_bridge = pytest.importorskip("transformer_lens.model_bridge")

PROMPTS = ["what color is the dog", "how many", "is there a cat on the table near the tree"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request, tmp_path_factory):
    folder = build_tiny(request.param, tmp_path_factory.mktemp(request.param))
    vlm = load(folder, dtype="float32", attn_implementation="eager")
    bridge = tl_bridge.TransformerBridge.boot_transformers(
        str(folder), device="cpu", dtype=torch.float32, tokenizer=vlm.tokenizer
    )
    bridge.eval()
    return vlm, bridge


def _same(a, b, exact):
    """Bit-equal for Llama; GPT-2's bridge reorders the fused-QKV attention (differences ~1e-7)."""
    return torch.equal(a, b) if exact else torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def inputs(pair):
    vlm, _ = pair
    return vlm.prepare([ns.Sample(id=str(i), prompt=p) for i, p in enumerate(PROMPTS)])


def _patch(vlm, where="all"):
    d = vlm.hidden_size
    g = torch.Generator().manual_seed(0)
    a = SteeringVector(torch.randn(d, generator=g), layer=1)
    b = SteeringVector(torch.randn(d, generator=g), layer=-1)
    return a.patch(1.5, where) + b.patch(torch.tensor([0.5, 0.0, -1.0]))


def _nn_logits(vlm, inputs, patch=None):
    with vlm.model.trace(dict(inputs)):
        if patch is not None:
            patch(vlm, inputs=inputs)
        out = vlm.model.output.logits.save()
    return out


@pytest.mark.parametrize("where", ["all", "prompt", "last_prompt", "generated"])
def test_tl_hooks_equal_nnsight_patch_in_a_forward(pair, inputs, where):
    vlm, bridge = pair
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    patch = _patch(vlm, where)
    valid = attn.bool()
    with torch.no_grad():
        plain = bridge(ids, attention_mask=attn)
        hooked = bridge.run_with_hooks(ids, attention_mask=attn, fwd_hooks=patch.tl_hooks(bridge, attention_mask=attn))
    exact = vlm.adapter.family == "llama"
    # the two libraries agree without edits, and with the same patch
    assert _same(plain[valid], _nn_logits(vlm, inputs)[valid], exact)
    assert _same(hooked[valid], _nn_logits(vlm, inputs, patch)[valid], exact)
    assert not torch.allclose(hooked[valid], plain[valid], atol=1e-3)


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("where", ["all", "generated", P.last_prompt() | P.generated()])
def test_tl_generation_equals_nnsight_steered_generation(pair, inputs, where, kv_cache):
    vlm, bridge = pair
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    patch = _patch(vlm, where)
    n = 6
    run = run_generation(vlm, inputs, n, edit=patch.bind(vlm, inputs))
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
    # the hooks are gone after the block
    assert all(not h.fwd_hooks for h in bridge.hook_dict.values() if hasattr(h, "fwd_hooks"))


def test_tl_hooks_without_attention_mask_edit_every_position(pair):
    vlm, bridge = pair
    inputs = vlm.prepare([ns.Sample(id="0", prompt=PROMPTS[2])])  # one row, no padding
    vec = SteeringVector(torch.randn(vlm.hidden_size), layer=0)
    patch = vec.patch(2.0)
    with torch.no_grad():
        hooked = bridge.run_with_hooks(inputs["input_ids"], fwd_hooks=patch.tl_hooks(bridge))
    assert _same(hooked, _nn_logits(vlm, inputs, patch), vlm.adapter.family == "llama")


def test_tl_hook_state_machine():
    """Prompt pass, KV-cache decode steps, and a no-cache recomputation, told apart by length."""
    vec = SteeringVector(torch.ones(4), layer=0)
    patch = vec.patch(1.0, "generated")

    class Cfg:
        d_model, n_layers, device = 4, 1, "cpu"

    class Fake:
        cfg = Cfg()
        hook_dict: ClassVar[dict] = {"blocks.0.hook_resid_post": object()}

        def parameters(self):
            return iter([torch.zeros(1)])

    ((name, hook),) = patch.tl_hooks(Fake(), attention_mask=torch.ones(2, 3, dtype=torch.long))
    assert name == "blocks.0.hook_resid_post" and isinstance(hook, TLHook)
    x = torch.zeros(2, 3, 4)
    assert torch.equal(hook(x), x)  # prompt: untouched by "generated"
    assert torch.equal(hook(torch.zeros(2, 1, 4)), torch.ones(2, 1, 4))  # decode step
    mixed = hook(torch.zeros(2, 5, 4))  # no KV cache: prompt + 2 generated tokens
    assert torch.equal(mixed[:, :3], torch.zeros(2, 3, 4)) and torch.equal(mixed[:, 3:], torch.ones(2, 2, 4))
    with pytest.raises(PositionError):
        hook(torch.zeros(2, 2, 4))


def test_tl_errors_before_any_forward(pair):
    vlm, bridge = pair
    d, n = vlm.hidden_size, vlm.n_layers
    with pytest.raises(HiddenSizeMismatchError):
        SteeringVector(torch.ones(d + 3), layer=0).patch().tl_hooks(bridge)
    with pytest.raises(LayerOutOfRangeError):
        SteeringVector(torch.ones(d), layer=n).patch().tl_hooks(bridge)
    with pytest.raises(PositionError):
        SteeringVector(torch.ones(d), layer=0).patch(1.0, "image").tl_hooks(bridge)
    assert resid_post_name(bridge, 0) in bridge.hook_dict
