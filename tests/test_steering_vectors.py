"""Steering vectors: makers against numpy, grouping by answers, fine-grained sign, save/load, errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nnshift as ns
from nnshift.errors import (
    CorruptStoreError,
    EmptyInputError,
    HiddenSizeMismatchError,
    NonFiniteError,
    SteeringError,
)
from nnshift.steering import (
    SteeringVector,
    answer_type_vector,
    coarse,
    fine,
    fine_all,
    load_vectors,
    save_vectors,
    target_answer,
)
from nnshift.store import Activations


def _acts(x, answers=None, layer=3, model="tiny", samples=None):
    ids = [f"s{i}" for i in range(x.shape[0])]
    return Activations(x, ids, answers=answers or [], info={"layer": layer, "model": model}, samples=samples)


class _Dico:
    """Any object with .concepts works as a dictionary."""

    def __init__(self, concepts, layer=2):
        self.concepts = concepts
        self.method = "kmeans"
        self.info = {"activations": {"layer": layer, "model": "m"}}


def test_coarse_is_mean_difference_with_provenance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    vec = coarse(_acts(torch.from_numpy(a)), _acts(torch.from_numpy(b)))
    np.testing.assert_allclose(vec.vector.numpy(), b.mean(0) - a.mean(0), rtol=1e-5, atol=1e-6)
    assert vec.layer == 3 and vec.method == "coarse" and vec.info["model"] == "tiny"
    assert vec.info["source"]["n"] == 7 and vec.info["target"]["ids"] == ["s0", "s1", "s2", "s3"]
    # plain tensors work too, layer given explicitly
    assert coarse(torch.from_numpy(a), torch.from_numpy(b), layer=-1).layer == -1


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(1, 5),
    st.floats(-3, 3, allow_nan=False, allow_infinity=False),
    st.integers(0, 10_000),
)
def test_coarse_properties(m, n, d, shift, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, d, generator=g), torch.randn(n, d, generator=g)
    ab, ba = coarse(a, b, layer=0).vector, coarse(b, a, layer=0).vector
    assert torch.allclose(ab, -ba, atol=1e-6)  # reversing the roles flips the sign
    assert torch.allclose(coarse(a + shift, b + shift, layer=0).vector, ab, atol=1e-4)  # a common offset cancels
    assert torch.allclose(coarse(a, a.clone(), layer=0).vector, torch.zeros(d))


def test_coarse_errors():
    with pytest.raises(HiddenSizeMismatchError):
        coarse(torch.ones(3, 4), torch.ones(3, 5), layer=0)
    with pytest.raises(SteeringError, match="different layers"):
        coarse(_acts(torch.ones(2, 4), layer=1), _acts(torch.ones(2, 4), layer=2))
    with pytest.raises(NonFiniteError):
        coarse(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2), layer=0)
    with pytest.raises(EmptyInputError):
        coarse(torch.zeros(0, 3), torch.ones(2, 3), layer=0)


def test_target_answer_groups_by_normalised_answers():
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    answers = ["Yes.", "no", "yes", "No!", "two", "2 "]
    acts = _acts(x, answers)
    vec = target_answer(acts, source="yes", target="no")
    expected = x[[1, 3]].mean(0) - x[[0, 2]].mean(0)
    assert torch.allclose(vec.vector, expected) and vec.method == "target_answer"
    assert vec.info["source"]["ids"] == ["s0", "s2"] and vec.info["target_answers"] == ["no"]
    # number words are normalised to digits: "two" and "2" are the same answer
    num = target_answer(acts, source=["yes"], target="2")
    assert num.info["target"]["ids"] == ["s4", "s5"]
    with pytest.raises(EmptyInputError, match="answers seen"):
        target_answer(acts, source="yes", target="white")
    with pytest.raises(SteeringError):
        target_answer(acts, source="yes", target="Yes")


def test_target_answer_by_reference_and_first_word():
    x = torch.randn(4, 3)
    samples = [ns.Sample(id=f"s{i}", prompt="q", answers=[a]) for i, a in enumerate(["yes", "no", "yes", "no"])]
    acts = _acts(x, ["yes it is", "no", "no", "no way"], samples=samples)
    ref = target_answer(acts, "yes", "no", by="reference")
    assert ref.info["source"]["ids"] == ["s0", "s2"] and ref.info["target"]["ids"] == ["s1", "s3"]
    both = target_answer(acts, "yes", "no", by="both", match="first_word")
    assert both.info["source"]["ids"] == ["s0"] and both.info["target"]["ids"] == ["s1", "s3"]
    acts.samples = None
    with pytest.raises(SteeringError, match="samples"):
        target_answer(acts, "yes", "no", by="reference")


def test_answer_type_vector():
    x = torch.randn(6, 4)
    acts = _acts(x, ["yes", "3", "red", "no", "two", "blue"])
    vec = answer_type_vector(acts, "yes/no", "number")
    assert torch.allclose(vec.vector, x[[1, 4]].mean(0) - x[[0, 3]].mean(0), atol=1e-6)
    assert vec.info["source_type"] == "yes/no" and vec.method == "answer_type"
    with pytest.raises(EmptyInputError):
        answer_type_vector(_acts(x, ["yes"] * 6), "yes/no", "other")


def test_fine_points_from_i_to_j_and_fine_all():
    u = torch.randn(4, 6)
    dico = _Dico(u)
    v = fine(dico, 1, 3)
    assert torch.equal(v.vector, u[3] - u[1])  # from concept 1 to concept 3: name and sign agree
    assert v.info["concepts"] == [1, 3] and v.layer == 2 and v.method == "fine"
    assert torch.allclose(v.vector + fine(dico, 3, 1).vector, torch.zeros(6))
    everything = fine_all(dico)
    assert len(everything) == 4 * 3 and (2, 2) not in everything
    assert all(torch.equal(vec.vector, u[j] - u[i]) for (i, j), vec in everything.items())
    # moving along u_j - u_i from u_i lands on u_j
    assert torch.allclose(u[1] + everything[(1, 3)].vector, u[3])
    assert set(fine_all(dico, pairs=[(0, 1)])) == {(0, 1)}
    with pytest.raises(SteeringError):
        fine(dico, 2, 2)
    with pytest.raises(SteeringError):
        fine(dico, 0, 9)
    with pytest.raises(SteeringError):
        fine(object(), 0, 1)


def test_fine_accepts_a_real_concept_dictionary():
    from nnshift.concepts import ConceptDictionary

    dico = ConceptDictionary(concepts=torch.randn(3, 5), method="kmeans", info={"activations": {"layer": 7}})
    v = fine(dico, 0, 2)
    assert torch.equal(v.vector, dico.concepts[2] - dico.concepts[0]) and v.layer == 7


def test_save_load_roundtrip(tmp_path):
    vec = coarse(_acts(torch.randn(3, 5)), _acts(torch.randn(2, 5)))
    vec.info["name"] = "yes->no"
    back = SteeringVector.load(vec.save(tmp_path / "v"))
    assert torch.equal(back.vector, vec.vector) and back.layer == vec.layer and back.method == "coarse"
    assert back.info["source"]["ids"] == vec.info["source"]["ids"] and back.info["name"] == "yes->no"
    many = fine_all(_Dico(torch.randn(3, 4)))
    loaded = load_vectors(save_vectors(many, tmp_path / "all"))
    assert set(loaded) == set(many) and all(torch.equal(loaded[k].vector, many[k].vector) for k in many)
    with pytest.raises(CorruptStoreError):
        SteeringVector.load(tmp_path / "missing")
    (tmp_path / "v" / "vector.json").write_text("{not json")
    with pytest.raises(CorruptStoreError):
        SteeringVector.load(tmp_path / "v")


def test_vector_validation_and_negation():
    with pytest.raises(NonFiniteError):
        SteeringVector(torch.tensor([0.0, float("inf")]))
    # a 2-D tensor: HiddenSizeMismatchError (the jaxtyping hook of the test run may catch it first)
    with pytest.raises((HiddenSizeMismatchError, TypeError)):
        SteeringVector(torch.ones(2, 3))
    v = fine(_Dico(torch.randn(3, 4)), 0, 1)
    neg = -v
    assert torch.equal(neg.vector, -v.vector) and neg.info["concepts"] == [1, 0]
    assert (
        v.vector.dtype == torch.float32
        and SteeringVector(torch.ones(3, dtype=torch.float16)).vector.dtype == torch.float32
    )
