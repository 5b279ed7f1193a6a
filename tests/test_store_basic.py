import pytest
import torch

import nnshift as ns
from nnshift.errors import CorruptStoreError, EmptyInputError, NonFiniteError, PairingError
from nnshift.store import as_matrix


def _acts(ids, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ns.Activations(torch.randn(len(ids), d, generator=g), ids=list(ids), answers=[f"a{i}" for i in ids])


def test_save_load_roundtrip(tmp_path):
    a = _acts(["x", "y", "z"])
    a.info["layer"] = 3
    a.save(tmp_path / "a")
    b = ns.Activations.load(tmp_path / "a")
    assert torch.equal(a.tensor, b.tensor)
    assert b.ids == a.ids and b.answers == a.answers and b.info["layer"] == 3


def test_load_missing_raises(tmp_path):
    with pytest.raises(CorruptStoreError, match="no saved activations"):
        ns.Activations.load(tmp_path / "nothing")


def test_pair_keeps_common_in_order():
    a = _acts(["1", "2", "3", "4"], seed=0)
    b = _acts(["4", "2", "9"], seed=1)
    pa, pb = ns.pair(a, b)
    assert pa.ids == pb.ids == ["2", "4"]
    assert torch.equal(pb.tensor[0], b.tensor[1]) and torch.equal(pa.tensor[1], a.tensor[3])


def test_pair_disjoint_raises():
    with pytest.raises(PairingError):
        ns.pair(_acts(["1"]), _acts(["2"]))


def test_as_matrix_checks():
    with pytest.raises(EmptyInputError):
        as_matrix(torch.zeros(0, 3))
    with pytest.raises(NonFiniteError, match="1 of 2 rows"):
        as_matrix(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


def test_jaxtyping_checks_are_active_in_tests():
    """The pytest jaxtyping import hook checks nnshift's shape annotations at run time."""
    import jaxtyping

    from nnshift.positions import every as all_positions

    with pytest.raises(jaxtyping.TypeCheckError):
        all_positions().prefill_mask(torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.bool))
