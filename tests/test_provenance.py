"""Pairing checks provenance (layers, selectors, one model twice) and steering strengths stay finite."""

import inspect
import warnings

import pytest
import torch

import nnshift as ns
from nnshift import shift
from nnshift.concepts import ConceptDictionary
from nnshift.errors import ArgumentError, NonFiniteError, PairingError, ProvenanceError, SteeringError
from nnshift.models import load
from nnshift.models.testing import build_tiny, tiny_image
from nnshift.steering import Patch, SteeringVector, coarse, fine, target_answer
from nnshift.steering.checks import check_edit_finite
from nnshift.store import Activations, check_same_provenance, same_model

warnings.filterwarnings("ignore")

TOI = {"kind": "TokenOfInterest", "word": "dog", "variants": ["dog", " dog"]}


def _acts(x, layer=1, selector=None, weights="w1", lora_weights=None, **extra):
    info = {"layer": layer, "selector": selector or {"kind": "LastPrompt"}, "hidden_size": x.shape[1]}
    info.update(weights=weights, lora=None, lora_weights=lora_weights, reduce=None, **extra)
    return Activations(x, [f"s{i}" for i in range(x.shape[0])], info=info)


def _world(m=24, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g)
    b = a + 0.5 * torch.randn(m, d, generator=g)
    u = torch.randn(k, d, generator=g)
    return a, b, ConceptDictionary.from_concepts(u), ConceptDictionary.from_concepts(u + 0.1)


def test_analyze_refuses_layer_3_against_layer_1_naming_both():
    a, b, da, db = _world()
    with pytest.raises(ProvenanceError, match="different layers") as exc:
        shift.analyze(_acts(a, layer=3), _acts(b, layer=1, weights="w2"), da, db)
    assert "layer=3" in exc.value.message and "layer=1" in exc.value.message and exc.value.hint
    assert isinstance(exc.value, PairingError)  # old `except PairingError` still catches it
    rep = shift.analyze(_acts(a, layer=3), _acts(b, layer=3, weights="w2"), da, db)
    assert rep.shift_vectors.shape == (3, 6)


def test_pair_and_analyze_refuse_different_selectors_and_reductions():
    a, b, da, db = _world()
    with pytest.raises(ProvenanceError, match="position selectors") as exc:
        ns.pair(_acts(a), _acts(b, selector=TOI, weights="w2"))
    assert "LastPrompt" in exc.value.message and "TokenOfInterest" in exc.value.message
    with pytest.raises(ProvenanceError, match="reductions"):
        shift.analyze(_acts(a), Activations(b, _acts(b).ids, info={"reduce": "mean"}), da, db)


def test_a_model_against_itself_is_refused_unless_asked():
    a, b, da, db = _world()
    acts_a, acts_b = _acts(a), _acts(b)  # same weights fingerprint, no adapter on both
    for call in (lambda **kw: ns.pair(acts_a, acts_b, **kw), lambda **kw: shift.analyze(acts_a, acts_b, da, db, **kw)):
        with pytest.raises(ProvenanceError, match="same model") as exc:
            call()
        assert "same_model_ok=True" in exc.value.hint
        assert call(same_model_ok=True) is not None
    # same base weights, an adapter on one side (or two different adapters): two models
    pa, pb = ns.pair(acts_a, _acts(b, lora_weights="adapter"))
    assert pa.ids == pb.ids
    ns.pair(_acts(a, lora_weights="x"), _acts(b, lora_weights="y"))
    with pytest.raises(ProvenanceError):
        ns.pair(_acts(a, lora_weights="x"), _acts(b, lora_weights="x"))


def test_without_provenance_nothing_is_checked():
    a, b, da, db = _world()
    rep = shift.analyze(a, b, da, db)  # plain tensors
    assert rep.shift_vectors.shape == (3, 6)
    old = Activations(a, [f"s{i}" for i in range(len(a))]), Activations(b, [f"s{i}" for i in range(len(b))])
    assert ns.pair(*old)[0].ids == old[0].ids  # old files: no info at all
    # a field known on one side only is not compared
    check_same_provenance({"layer": 2}, {"selector": TOI}, same_model_ok=False)
    assert not same_model({"weights": "w"}, {"weights": "w"})  # old store keys without the adapter fields


def test_comparison_is_insensitive_to_json_round_trips_and_relative_layers():
    check_same_provenance(
        {"selector": {"variants": ("a", "b"), "kind": "T"}}, {"selector": {"kind": "T", "variants": ["a", "b"]}}
    )
    check_same_provenance({"layer": -1}, {"layer": 5})  # -1 is relative to a depth we do not know
    with pytest.raises(ProvenanceError, match="hidden sizes"):
        check_same_provenance({"hidden_size": 8}, {"hidden_size": 16}, ("x", "y"))


def test_captures_of_one_tiny_model_refused_then_allowed(tmp_path):
    vlm = load(build_tiny("llava", tmp_path / "llava"))
    samples = [ns.Sample(id=f"s{i}", prompt="what color is the circle", image=tiny_image(i)) for i in range(3)]
    acts = ns.capture(vlm, samples, layer=[0, 1], at="last_prompt", progress=False)
    with pytest.raises(ProvenanceError, match=r"layer=0.*layer=1"):
        ns.pair(acts[0], acts[1], same_model_ok=True)
    again = ns.capture(vlm, samples, layer=0, at="last_prompt", progress=False)
    with pytest.raises(ProvenanceError, match="same model"):
        ns.pair(acts[0], again)
    pa, pb = ns.pair(acts[0], again, same_model_ok=True)
    assert torch.equal(pa.tensor, pb.tensor)  # one model twice: identical rows, as the refusal warns


def test_coarse_checks_layers_but_allows_two_models_and_selectors():
    x, y = torch.randn(4, 6), torch.randn(5, 6)
    with pytest.raises(ProvenanceError, match="different layers") as exc:
        coarse(_acts(x, layer=2), _acts(y, layer=4))
    assert isinstance(exc.value, SteeringError) and "layer=2" in exc.value.message
    vec = coarse(_acts(x), _acts(y, selector=TOI, weights="w2"))  # caption-style: base mean -> ft word token
    assert vec.layer == 1 and vec.info["target"]["selector"] == TOI and vec.info["source"]["weights"] == "w1"
    assert torch.allclose(vec.vector, y.mean(0) - x.mean(0))
    with pytest.raises(ProvenanceError, match="layer="):
        coarse(_acts(x, layer=3), _acts(y, layer=3), layer=5)  # a vector made at 3 claimed for 5
    assert coarse(_acts(x, layer=3), _acts(y, layer=3), layer=-1).layer == -1  # relative: not comparable
    with pytest.raises(ArgumentError):
        inspect.unwrap(coarse)(x, y, layer="3")  # unwrapped: the tests' type checker would catch it first


def test_answer_makers_and_fine_check_the_explicit_layer():
    acts = _acts(torch.randn(4, 6), layer=2)
    acts.answers = ["yes", "no", "yes", "no"]
    assert target_answer(acts, "yes", "no").layer == 2
    with pytest.raises(ProvenanceError):
        target_answer(acts, "yes", "no", layer=7)
    dico = ConceptDictionary.from_concepts(torch.randn(3, 6))
    dico.info = {"activations": {"layer": 2}}
    assert fine(dico, 0, 1).layer == 2
    with pytest.raises(ProvenanceError, match="different layers"):
        fine(dico, 0, 1, layer=4)


def test_alpha_and_the_edit_must_be_finite():
    vec = SteeringVector(torch.full((6,), 10.0), layer=0)
    for bad in (float("nan"), float("inf"), 1e39):
        with pytest.raises(NonFiniteError):
            vec.patch(bad)
    with pytest.raises(ArgumentError):
        inspect.unwrap(SteeringVector.patch)(vec, True)
    with pytest.raises(NonFiniteError, match="alpha"):
        vec.patch(torch.tensor([1.0, float("nan")]))
    ok = vec.patch(1e30)  # 1e31 fits float32 ...
    with pytest.raises(NonFiniteError, match="float16"):
        check_edit_finite(ok, torch.float16)  # ... but not a float16 model
    check_edit_finite(vec.patch(6000.0), torch.float16)  # 6e4 < 65504
    with pytest.raises(NonFiniteError):  # two patches of one layer add up
        check_edit_finite(vec.patch(4000.0) + vec.patch(4000.0), torch.float16)


def test_steer_and_bind_refuse_an_overflowing_edit(tmp_path):
    vlm = load(build_tiny("llava", tmp_path / "llava"))
    samples = [ns.Sample(id="s0", prompt="what color is the circle", image=tiny_image(0))]
    patch = Patch(SteeringVector(torch.ones(vlm.hidden_size), layer=0), alpha=1e39)  # built without .patch()
    with pytest.raises(NonFiniteError, match="steering edit"):
        ns.steer(vlm, samples, patch, max_new_tokens=2, progress=False)
    with pytest.raises(NonFiniteError, match="steering edit"):
        patch.bind(vlm, vlm.prepare(samples))
    assert len(ns.steer(vlm, samples, patch.with_alpha(1.0), max_new_tokens=2, progress=False)) == 1
