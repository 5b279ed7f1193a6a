"""The sweep's shared path without nnsight: the hook decoder (finished rows leave the batch) and the fluency of
every answer scored from the batch's unsteered prefix. Each is compared with the plain path (nnsight generation,
`answer_nll` over full prompts), and counted, so a test fails when the fast path silently does not run."""

import math
import warnings

import pytest
import torch

import nnshift as ns
from nnshift.options import run_options
from nnshift.positions import generated, last_prompt
from nnshift.steering import SteeringVector, decode, fluency, prefix, sweeps
from nnshift.steering.targets import AnswerTypeTarget

warnings.filterwarnings("ignore")

TARGET = AnswerTypeTarget("yes/no", "number")
FAMILIES = ["llava", "idefics3", "internvl", "aya_vision", "gpt2"]


def _unshared(m):
    m.setattr(sweeps, "can_share_prefix", lambda *a: False)
    m.setattr(sweeps, "can_split_prefix", lambda *a: False)
    m.setattr(fluency, "shares_prefix", lambda *a: False)
    m.setattr(sweeps, "run_shared", lambda *a, **k: pytest.fail("the plain path shared the prefix"))


def _compare(monkeypatch, vlm, vec, samples, **kw):
    """(plain report, shared report, counts): the shared run must score every answer during the grid run."""
    counts = {"decode": 0, "scored": 0}
    real_decode, real_nll = prefix.decode_from_cache, sweeps.nll_from_prefix

    def counted_decode(*a, **k):
        counts["decode"] += 1
        return real_decode(*a, **k)

    def counted_nll(*a, **k):
        counts["scored"] += len(a[3])
        return real_nll(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(prefix, "decode_from_cache", counted_decode)
        m.setattr(sweeps, "nll_from_prefix", counted_nll)
        m.setattr(sweeps, "answer_nll", lambda *a, **k: pytest.fail("an answer was scored over its full prompt"))
        shared = ns.steering.sweep(vlm, vec, samples, target=TARGET, progress=False, **kw)
    with monkeypatch.context() as m:
        _unshared(m)
        plain = ns.steering.sweep(vlm, vec, samples, target=TARGET, progress=False, **kw)
    return plain, shared, counts


def _assert_same(plain, shared):
    for a, b in zip(plain.rows, shared.rows, strict=True):
        assert a.name == b.name
        assert a.answers == b.answers, a.name
        ma, mb = torch.tensor(a.sample_margin), torch.tensor(b.sample_margin)
        assert torch.allclose(ma, mb, atol=1e-5, equal_nan=True), (a.name, (ma - mb).abs().nan_to_num().max())
        na, nb = torch.tensor(a.sample_nll), torch.tensor(b.sample_nll)
        assert torch.equal(na.isnan(), nb.isnan()), a.name
        assert torch.allclose(na, nb, atol=1e-5, equal_nan=True), (a.name, (na - nb).abs().nan_to_num().max())


@pytest.fixture(scope="module")
def shapes_set():
    return ns.zoo.dataset(12, task="vqa", seed=305)


@pytest.mark.parametrize("positions", ["all", "union"])
def test_shapes_sweep_with_fluency_and_baselines_matches_the_plain_path(
    monkeypatch, shapes_vlm, yesno_number_vector, shapes_set, positions
):
    """Every measure of the report (answers, margins, per-sample NLL), with a prompting baseline and another model
    whose answers are scored from the same prefixes; layer 2 shares below its patch, layer 3 as it is."""
    vec = {2: yesno_number_vector, 3: yesno_number_vector}
    plain, shared, counts = _compare(
        monkeypatch,
        shapes_vlm,
        vec,
        shapes_set,
        alphas=(1.0, 3.0, 8.0),
        layers=[2, 3],
        positions="all" if positions == "all" else last_prompt() | generated(),
        prompts={"prompt: number": "Answer with a number."},
        models={"again": shapes_vlm},
        batch_size=5,
        max_new_tokens=4,
    )
    assert counts["decode"] == 3  # 12 samples in batches of 5
    assert counts["scored"] >= len(shapes_set) * 2  # several distinct answers per sample
    _assert_same(plain, shared)
    steered = [r for r in plain.rows if r.kind == "steer"]
    assert any(r.answers != plain.rows[0].answers for r in steered), "the steering changed nothing: vacuous"
    assert len({round(v, 4) for r in plain.rows for v in r.sample_nll if math.isfinite(v)}) > 5


def test_rows_finishing_at_different_steps_leave_the_batch(monkeypatch, shapes_vlm, yesno_number_vector, shapes_set):
    """The decoder computes fewer rows once some have ended, and still answers what the plain path answers."""
    sizes = []

    def spy(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            sizes.append(int(ids.shape[0]))

    vec = {2: yesno_number_vector}  # layer 2, strong: some answers degenerate into long ones
    kw = {"alphas": (3.0, 8.0), "layers": [2], "fluency": False, "batch_size": 12, "max_new_tokens": 6}
    handle = shapes_vlm.hf.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        shared = ns.steering.sweep(shapes_vlm, vec, shapes_set, target=TARGET, progress=False, **kw)
    finally:
        handle.remove()
    assert sizes[0] == len(shapes_set) * 3 and 0 < min(sizes) < sizes[0], sizes
    lengths = {n for r in shared.rows for n in r.sample_length}
    assert len(lengths) > 1  # some rows ended before others
    with monkeypatch.context() as m:
        _unshared(m)
        plain = ns.steering.sweep(shapes_vlm, vec, shapes_set, target=TARGET, progress=False, **kw)
    for a, b in zip(plain.rows, shared.rows, strict=True):
        assert a.answers == b.answers


def test_copies_patched_at_the_last_layer_share_their_forward_rows(
    monkeypatch, shapes_vlm, yesno_number_vector, shapes_set
):
    """At the last layer, every copy of a sample (unsteered and each alpha) runs one forward row at step 0, and
    later one per distinct answer so far; the answers, margins and states are the plain path's."""
    sizes = []

    def spy(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            sizes.append(int(ids.shape[0]))

    kw = {"alphas": (0.5, 2.0, 8.0), "layers": [3], "fluency": False, "batch_size": 12, "max_new_tokens": 4}
    handle = shapes_vlm.hf.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        shared = ns.steering.sweep(shapes_vlm, yesno_number_vector, shapes_set, target=TARGET, progress=False, **kw)
    finally:
        handle.remove()
    assert sizes[0] == len(shapes_set), sizes  # 4 copies per sample, one forward row each at step 0
    distinct = sum(len({r.answers[i] for r in shared.rows}) for i in range(len(shapes_set)))  # answers per sample
    assert sizes[1] <= distinct < len(shapes_set) * 4, (sizes, distinct)
    with monkeypatch.context() as m:
        _unshared(m)
        plain = ns.steering.sweep(shapes_vlm, yesno_number_vector, shapes_set, target=TARGET, progress=False, **kw)
    for a, b in zip(plain.rows, shared.rows, strict=True):
        assert a.answers == b.answers
        assert torch.allclose(torch.tensor(a.sample_margin), torch.tensor(b.sample_margin), atol=1e-5, equal_nan=True)
    assert any(r.answers != plain.rows[0].answers for r in plain.rows[1:])  # the alphas changed answers


def test_a_generation_config_with_logits_processors_keeps_hf_generation(
    monkeypatch, shapes_vlm, yesno_number_vector, shapes_set
):
    """A repetition penalty changes HF's greedy choice: the decoder is not used, and HF's generation gives the
    plain path's answers."""
    config = shapes_vlm.hf.generation_config
    monkeypatch.setattr(config, "repetition_penalty", 1.3)
    assert not decode.plain_greedy(shapes_vlm)
    monkeypatch.setattr(prefix, "decode_from_cache", lambda *a, **k: pytest.fail("decoder used"))
    kw = {"alphas": (2.0,), "layers": [3], "fluency": False, "batch_size": 6, "max_new_tokens": 4}
    shared = ns.steering.sweep(shapes_vlm, yesno_number_vector, shapes_set, target=TARGET, progress=False, **kw)
    with monkeypatch.context() as m:
        _unshared(m)
        plain = ns.steering.sweep(shapes_vlm, yesno_number_vector, shapes_set, target=TARGET, progress=False, **kw)
    for a, b in zip(plain.rows, shared.rows, strict=True):
        assert a.answers == b.answers
    monkeypatch.setattr(config, "repetition_penalty", 1.0)
    assert decode.plain_greedy(shapes_vlm)


def test_nll_from_prefix_equals_the_full_prompt_pass(shapes_vlm, shapes_set):
    """Directly: answers of several lengths (and an empty one) to left-padded prompts, vs `answer_nll` in full."""
    vlm = shapes_vlm
    batch = shapes_set[:6]
    inputs = vlm.prepare(batch)
    assert int(inputs["attention_mask"].sum(1).min()) < inputs["attention_mask"].shape[1]  # left padding
    cache, _ = prefix._prefix_pass(vlm, inputs, ())
    pairs = [(b, vlm.tokenizer.encode(w, add_special_tokens=False)) for b in range(6) for w in ("3", "red cube")]
    pairs.append((2, []))
    got = torch.tensor(fluency.nll_from_prefix(vlm, inputs, cache, pairs))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fluency, "shares_prefix", lambda *a: False)
        full = fluency.answer_nll(
            vlm, [batch[b] for b, _ in pairs], [x for _, x in pairs], options=run_options(None, progress=False)
        )
    full = torch.tensor(full)
    assert bool(got[-1].isnan()) and bool(full[-1].isnan())
    assert torch.allclose(got[:-1], full[:-1], atol=1e-5), (got - full).abs().nan_to_num().max()


def test_fork_cache_leaves_the_original(shapes_vlm, shapes_set):
    cache, _ = prefix._prefix_pass(shapes_vlm, shapes_vlm.prepare(shapes_set[:3]), ())
    keys = [layer.keys.clone() for layer in cache.layers]
    fork = prefix.fork_cache(cache)
    fork.batch_select_indices(torch.tensor([2]))
    cache.batch_repeat_interleave(2)
    assert all(f.keys.shape[0] == 1 for f in fork.layers)
    assert all(torch.equal(f.keys[0], k[2]) for f, k in zip(fork.layers, keys, strict=True))
    assert all(torch.equal(c.keys[::2], k) for c, k in zip(cache.layers, keys, strict=True))


def test_prefix_pass_stops_once_the_last_block_has_filled_its_cache(shapes_vlm, shapes_set):
    """The last block's output (its feed-forward part) and the unembedding are never computed on the prefix, and
    every layer's keys and values are there."""
    vlm = shapes_vlm
    ran = []
    last = vlm.layer_module(vlm.n_layers - 1)
    handles = [
        last.register_forward_hook(lambda *a: ran.append("block")),
        vlm._unembed.register_forward_hook(lambda *a: ran.append("unembed")),
    ]
    try:
        inputs = vlm.prepare(shapes_set[:3])
        cache, states = prefix._prefix_pass(vlm, inputs, [1])
    finally:
        for h in handles:
            h.remove()
    assert ran == []
    n = inputs["input_ids"].shape[1] - 1
    assert [layer.keys.shape[-2] for layer in cache.layers] == [n] * vlm.n_layers
    assert states[1].shape[:2] == (3, n)


@pytest.mark.parametrize("arch", FAMILIES)
def test_tiny_family_sweep_with_fluency_matches_the_plain_path(monkeypatch, tiny_family, arch):
    vlm, samples = tiny_family(arch)
    assert prefix._last_attention(vlm) is not None  # the adapter names the block's attention: passes stop there
    acts = ns.capture(vlm, samples, layer=0, at="last_prompt", progress=False)
    norm = float(acts.tensor.float().norm(dim=-1).mean())
    v = torch.randn(vlm.hidden_size, generator=torch.Generator().manual_seed(0))
    vec = {0: SteeringVector(v / v.norm() * norm, 0), 1: SteeringVector(v / v.norm() * norm, 1)}
    plain, shared, counts = _compare(
        monkeypatch,
        vlm,
        vec,
        samples,
        alphas=(0.5, 4.0),
        layers=[0, 1],
        positions="all",
        prompts={"prompt: yes": "answer yes"},
        batch_size=3,
        max_new_tokens=3,
    )
    assert counts["decode"] == 2 and counts["scored"] >= len(samples)
    _assert_same(plain, shared)
