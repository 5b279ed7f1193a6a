"""Prompt-prefix sharing in `sweep`: the shared path gives the plain path's token ids and margins, or is not used.

Each comparison runs the sweep's grid twice on the same plan: once as the plain path (every prompt in full at
every grid point; `can_share_prefix` forced off) and once shared (the prefix once per sample; counted, so a
test fails when the shared path silently does not run).
"""

import dataclasses
import warnings

import pytest
import torch

import nnshift as ns
from nnshift.options import run_options
from nnshift.positions import generated, image, last_prompt, text
from nnshift.steering import Patch, SteeringVector, prefix, sweeps
from nnshift.steering.sweep_args import check_sweep_args
from nnshift.steering.targets import AnswerTypeTarget

warnings.filterwarnings("ignore")

TARGET = AnswerTypeTarget("yes/no", "number")
POSITIONS = {"last_prompt": "last_prompt", "generated": "generated", "union": last_prompt() | generated()}


def _grid(vlm, vec, samples, positions, *, alphas, layers, prompts=None, max_new_tokens=4, batch_size=4):
    plan = check_sweep_args(vlm, vec, samples, TARGET, alphas, layers, positions, None, prompts, None, False, True)
    opts = run_options(None, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False)
    points = sweeps._grid(plan)
    return points, sweeps._run_grid(vlm, plan, points, opts, [])[0]


def _both(monkeypatch, vlm, vec, samples, positions, **kw):
    """(plain answers, shared answers, number of shared generations)."""
    calls = []
    real = sweeps.run_shared

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(sweeps, "can_share_prefix", lambda *a: False)
        m.setattr(sweeps, "can_split_prefix", lambda *a: False)
        m.setattr(sweeps, "run_shared", lambda *a, **k: pytest.fail("the plain path shared the prefix"))
        points, plain = _grid(vlm, vec, samples, positions, **kw)
    with monkeypatch.context() as m:
        m.setattr(sweeps, "run_shared", counted)
        _, shared = _grid(vlm, vec, samples, positions, **kw)
    return points, plain, shared, len(calls)


def _assert_same(points, plain, shared):
    for p, a, b in zip(points, plain, shared, strict=True):
        assert a.ids == b.ids, p.name
        assert a.text == b.text, p.name
        ma, mb = torch.tensor(a.margins), torch.tensor(b.margins)
        assert torch.allclose(ma, mb, atol=1e-5, equal_nan=True), (p.name, ma, mb)


# ---------------------------------------------------------------------------- shapes zoo (LLaVA)


@pytest.fixture(scope="module")
def shapes(shapes_vlm):
    return shapes_vlm


@pytest.fixture(scope="module")
def shapes_vec(shapes):
    yn = ns.zoo.dataset(12, task="vqa", answer_type="yes/no", seed=201)
    num = ns.zoo.dataset(12, task="vqa", answer_type="number", seed=202)
    acts = ns.capture(shapes, yn + num, layer=3, at="last_prompt", progress=False)
    return ns.steering.answer_type_vector(acts, "yes/no", "number", by="reference")


@pytest.fixture(scope="module")
def shapes_set():
    samples = ns.zoo.dataset(10, task="vqa", seed=305)
    assert len({len(s.prompt.split()) for s in samples}) > 1  # prompts of different lengths: left padding
    return samples


@pytest.mark.parametrize("where", list(POSITIONS))
def test_shapes_shared_equals_plain(monkeypatch, shapes, shapes_vec, shapes_set, where):
    points, plain, shared, calls = _both(
        monkeypatch,
        shapes,
        shapes_vec,
        shapes_set,
        POSITIONS[where],
        alphas=(0.0, 1.0, 3.0, 8.0),
        layers=[2, 3],
        prompts={"prompt: number": "Answer with a number."},
        max_new_tokens=5,
    )
    assert calls == 3  # 10 samples in batches of 4
    _assert_same(points, plain, shared)
    base = plain[0]
    assert not any(torch.isnan(torch.tensor(base.margins)))  # steerability margins are compared
    assert any(a.ids != base.ids for a in plain[2:]), "the steering changed nothing: the comparison is vacuous"
    if where != "generated":  # the margins are read at the last prompt position: steered there
        assert any(a.margins != base.margins for a in plain[2:])
    else:
        assert all(a.margins == base.margins for a in plain[2:])
    # early stopping: some answers end (EOS) before max_new_tokens
    assert any(len(t) < 5 for a in plain for t in a.ids)


@pytest.mark.parametrize("op", ["project_out", "clamp"])
def test_shapes_operator_patch_shared_equals_plain(monkeypatch, shapes, shapes_vec, shapes_set, op):
    """A patch's operator is kept on the shared path too (bound to the last prompt column)."""
    value = 2.0 if op == "clamp" else None
    patch = Patch(shapes_vec, 1.0, last_prompt() | generated(), layer=3, op=op, value=value)
    points, plain, shared, calls = _both(
        monkeypatch, shapes, patch, shapes_set, None, alphas=(0.5, 1.0), layers=[2, 3], max_new_tokens=3
    )
    assert calls == 3
    _assert_same(points, plain, shared)
    assert any(a.margins != plain[0].margins for a in plain[1:])


def test_batches_that_cannot_share_fall_back_exactly(monkeypatch, shapes, shapes_vec, shapes_set):
    """A batch refused by `batch_allows_sharing` runs its grid rows in full, laid out as the plain path does."""
    monkeypatch.setattr(sweeps, "batch_allows_sharing", lambda *a: False)
    points, plain, shared, calls = _both(
        monkeypatch,
        shapes,
        shapes_vec,
        shapes_set,
        "last_prompt",
        alphas=(1.0, 4.0),
        layers=[2, 3],
        prompts={"prompt: number": "Answer with a number."},
    )
    assert calls == 0
    _assert_same(points, plain, shared)


def test_shapes_public_sweep_uses_sharing_and_matches(monkeypatch, shapes, shapes_vec, shapes_set):
    """Through `ns.steering.sweep`: the report's answers and margins do not change when sharing is switched off."""
    kw = {
        "target": TARGET,
        "alphas": (1.0, 4.0),
        "layers": [2, 3],
        "positions": last_prompt() | generated(),
        "fluency": False,
        "batch_size": 5,
        "max_new_tokens": 4,
        "progress": False,
    }
    calls = []
    real = sweeps.run_shared
    monkeypatch.setattr(sweeps, "run_shared", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = ns.steering.sweep(shapes, shapes_vec, shapes_set, **kw)
    assert calls == [1, 1]
    monkeypatch.setattr(sweeps, "can_share_prefix", lambda *a: False)
    plain = ns.steering.sweep(shapes, shapes_vec, shapes_set, **kw)
    assert len(calls) == 2
    for a, b in zip(plain.rows, shared.rows, strict=True):
        assert a.answers == b.answers
        assert torch.allclose(torch.tensor(a.sample_margin), torch.tensor(b.sample_margin), atol=1e-5, equal_nan=True)
        assert a.sample_moved == b.sample_moved


@pytest.mark.parametrize("where", ["image", "last_prompt_or_image", "last_prompt_or_all", "text_or_image"])
def test_positions_touching_the_prefix_by_its_end_run_plain(monkeypatch, shapes, shapes_vec, shapes_set, where):
    """A last_prompt part moves with the prompt's end, and image() refuses the last (text) column alone: with
    positions on the prefix too, nothing is shared, at any layer when image positions are among them."""
    sel = {
        "image": image(),
        "last_prompt_or_image": last_prompt() | image(),
        "last_prompt_or_all": last_prompt() | ns.positions.every(),
        "text_or_image": text() | image(),
    }[where]
    monkeypatch.setattr(sweeps, "run_shared", lambda *a, **k: pytest.fail("shared path used"))
    layers = [2] if where == "last_prompt_or_all" else [2, 3]  # (the last layer shares for last_prompt | all)
    _grid(shapes, shapes_vec, shapes_set, sel, alphas=(1.0,), layers=layers, max_new_tokens=1, batch_size=10)
    assert not prefix.can_share_prefix(shapes, sel, False, 2) and not prefix.can_split_prefix(shapes, sel, False)
    assert prefix.can_share_prefix(shapes, sel, False, 3) == (where == "last_prompt_or_all")


@pytest.mark.parametrize("where", ["all", "prompt", "text", "text_or_generated"])
def test_positions_on_the_prefix_share_it_below_the_patch(monkeypatch, shapes, shapes_vec, shapes_set, where):
    """Patched on earlier prompt positions at layer l < last: the prefix is shared up to l, exactly as plain."""
    sel = text() | generated() if where == "text_or_generated" else where
    assert prefix.can_split_prefix(shapes, ns.positions.as_selector(sel), False)
    assert not prefix.can_share_prefix(shapes, ns.positions.as_selector(sel), False, 2)
    points, plain, shared, calls = _both(
        monkeypatch,
        shapes,
        shapes_vec,
        shapes_set,
        sel,
        alphas=(0.5, 2.0, 6.0),
        layers=[0, 1, 2, 3],
        prompts={"prompt: number": "Answer with a number."},
        max_new_tokens=4,
    )
    assert calls == 3
    _assert_same(points, plain, shared)
    for layer in (0, 1, 2):
        rows = [a for p, a in zip(points, plain, strict=True) if p.layer == layer]
        assert any(a.ids != plain[0].ids for a in rows), f"layer {layer} changed nothing: the check is vacuous"


@pytest.mark.parametrize("where", ["all", "prompt", "text"])
def test_any_positions_at_the_last_layer_share_and_match(monkeypatch, shapes, shapes_vec, shapes_set, where):
    """At the last layer a patch at earlier prompt positions reaches nothing generation reads: shared == plain.

    Layer 2 (which needs the full prompt) runs plain beside it, in the same sweep."""
    points, plain, shared, calls = _both(
        monkeypatch,
        shapes,
        shapes_vec,
        shapes_set,
        where,
        alphas=(1.0, 3.0),
        layers=[2, 3],
        prompts={"prompt: number": "Answer with a number."},
        max_new_tokens=4,
    )
    assert calls == 3  # the unsteered and layer-3 points of the 3 batches
    _assert_same(points, plain, shared)
    l2 = [a for p, a in zip(points, plain, strict=True) if p.layer == 2]
    l3 = [a for p, a in zip(points, plain, strict=True) if p.layer == 3]
    assert any(a.ids != plain[0].ids for a in l3) and any(a.ids != plain[0].ids for a in l2)  # both steer


def test_remote_and_unverified_families_run_plain(shapes):
    sel = last_prompt() | generated()
    assert prefix.can_share_prefix(shapes, sel, False)
    assert not prefix.can_share_prefix(shapes, sel, True)
    assert not prefix.can_share_prefix(shapes, sel, "local")
    unverified = dataclasses.replace(shapes.adapter, shares_prompt_prefix=False)
    fake = type("Fake", (), {"adapter": unverified, "hf": shapes.hf})()
    assert not prefix.can_share_prefix(fake, sel, False)
    assert not prefix.can_share_prefix(object(), sel, False)
    every = ns.positions.every()
    assert prefix.can_split_prefix(shapes, every, False)
    assert not any(prefix.can_split_prefix(x, every, r) for x, r in ((shapes, True), (shapes, "local"), (fake, False)))


def test_unverified_family_sweep_runs_plain(monkeypatch, shapes, shapes_vec, shapes_set):
    monkeypatch.setattr(shapes, "adapter", dataclasses.replace(shapes.adapter, shares_prompt_prefix=False))
    monkeypatch.setattr(sweeps, "run_shared", lambda *a, **k: pytest.fail("shared path used"))
    _grid(shapes, shapes_vec, shapes_set, "last_prompt", alphas=(1.0,), layers=[3], max_new_tokens=1, batch_size=10)


def test_a_batch_ending_in_an_image_token_runs_plain(shapes, shapes_set):
    inputs = shapes.prepare(shapes_set[:2])
    assert prefix.batch_allows_sharing(shapes, inputs)
    ids = inputs["input_ids"].clone()
    ids[:, -1] = shapes._image_token_id
    assert not prefix.batch_allows_sharing(shapes, {**inputs, "input_ids": ids})
    right = inputs["attention_mask"].clone()
    right[0, -1] = 0
    assert not prefix.batch_allows_sharing(shapes, {**inputs, "attention_mask": right})


# ---------------------------------------------------------------------------- tiny models of the enabled families

ENABLED = [
    "llava",
    "llava_next",
    "llava_onevision",
    "idefics2",
    "idefics3",
    "smolvlm",
    "internvl",
    "aya_vision",
    "gpt2",
]


def _tiny_vector(vlm, samples, layer):
    acts = ns.capture(vlm, samples, layer=layer, at="last_prompt", progress=False)
    norm = float(acts.tensor.float().norm(dim=-1).mean())
    g = torch.Generator().manual_seed(0)
    v = torch.randn(vlm.hidden_size, generator=g)
    return SteeringVector(v / v.norm() * norm, layer)


@pytest.mark.parametrize("where", ["last_prompt_or_generated", "all"])
@pytest.mark.parametrize("arch", ENABLED)
def test_tiny_family_shared_equals_plain(monkeypatch, tiny_family, arch, where):
    """Each enabled family: the shared prefix (last_prompt | generated) and the prefix shared below the patch
    ("all": layer 0 runs only its layers above, layer 1 is the last) generate what the plain path does."""
    vlm, samples = tiny_family(arch)
    assert vlm.adapter.shares_prompt_prefix
    vecs = {0: _tiny_vector(vlm, samples, 0), 1: _tiny_vector(vlm, samples, 1)}
    points, plain, shared, calls = _both(
        monkeypatch,
        vlm,
        vecs,
        samples,
        last_prompt() | generated() if where == "last_prompt_or_generated" else "all",
        alphas=(0.5, 2.0, 6.0),
        layers=[0, 1],
        prompts={"prompt: yes": "answer yes"},
        batch_size=3,
    )
    assert calls == 2
    _assert_same(points, plain, shared)
    assert any(a.ids != plain[0].ids for a in plain[2:]), "the steering changed nothing: the comparison is vacuous"


@pytest.mark.parametrize("arch", ["qwen2_vl", "gemma3", "paligemma"])
def test_unverified_tiny_families_are_off(tiny_family, arch):
    vlm, _ = tiny_family(arch)
    assert not vlm.adapter.shares_prompt_prefix
    assert not prefix.can_share_prefix(vlm, last_prompt(), False)


# ---------------------------------------------------------------------------- fluency


def _nll_both(monkeypatch, vlm, samples, ids, batch_size):
    """answer_nll with the prompt shared (counted) and in full; (shared, full, shared batches)."""
    from nnshift.steering import fluency

    calls = []
    real = fluency._batch_nll_shared
    monkeypatch.setattr(fluency, "_batch_nll_shared", lambda *a: calls.append(1) or real(*a))
    opts = run_options(None, batch_size=batch_size, progress=False)
    shared = fluency.answer_nll(vlm, samples, ids, options=opts)
    with monkeypatch.context() as m:
        m.setattr(fluency, "shares_prefix", lambda *a: False)
        m.setattr(fluency, "_batch_nll_shared", lambda *a: pytest.fail("the full path shared the prompt"))
        full = fluency.answer_nll(vlm, samples, ids, options=opts)
    return torch.tensor(shared), torch.tensor(full), len(calls)


def _some_answers(vlm, samples):
    """Per sample three answers: its own greedy answer, a longer one and an empty one (several per prompt)."""
    own = [vlm.tokenizer.encode(a, add_special_tokens=False) for a in ns.generate(vlm, samples, 3, progress=False)]
    word = vlm.tokenizer.encode(" yes", add_special_tokens=False)
    rows, ids = [], []
    for s, a in zip(samples, own, strict=True):
        rows += [s, s, s]
        ids += [list(a), list(a) + word + word, []]
    return rows, ids


def test_fluency_shared_prompt_equals_full(monkeypatch, shapes, shapes_set):
    rows, ids = _some_answers(shapes, shapes_set)
    shared, full, calls = _nll_both(monkeypatch, shapes, rows, ids, batch_size=7)
    assert calls >= 4  # every batch shared its prompts
    assert torch.equal(shared.isnan(), full.isnan()) and int(full.isnan().sum()) == len(shapes_set)  # empty answers
    assert torch.allclose(shared, full, atol=1e-5, equal_nan=True), (shared - full).abs().nan_to_num().max()
    assert len({round(float(x), 4) for x in full[~full.isnan()]}) > 3  # answers differ: the check is not vacuous


@pytest.mark.parametrize("arch", ENABLED)
def test_tiny_family_fluency_shared_equals_full(monkeypatch, tiny_family, arch):
    vlm, samples = tiny_family(arch)
    rows, ids = _some_answers(vlm, samples)
    shared, full, calls = _nll_both(monkeypatch, vlm, rows, ids, batch_size=4)
    assert calls >= 1
    assert torch.allclose(shared, full, atol=1e-5, equal_nan=True), (shared - full).abs().nan_to_num().max()


def test_fluency_of_an_unverified_family_runs_in_full(monkeypatch, shapes, shapes_set):
    from nnshift.steering import fluency

    monkeypatch.setattr(shapes, "adapter", dataclasses.replace(shapes.adapter, shares_prompt_prefix=False))
    monkeypatch.setattr(fluency, "_batch_nll_shared", lambda *a: pytest.fail("shared"))
    assert not prefix.shares_prefix(shapes)
    fluency.answer_nll(shapes, shapes_set[:2], [[5], [6, 7]])
