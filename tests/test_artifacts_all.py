"""Every saved artifact type, round-tripped and then damaged file by file and field by field.

Types: activations, concept dictionaries (k-means with codes, PCA with its mean), one steering vector, a
`save_vectors` folder, a shift report (with groundings, so NaN-for-not-measured fields exist). Each damage must
give an `ArtifactError` (an `NnshiftError` with a hint), never a raw KeyError / TypeError nor a silent load.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import nnshift as ns
from nnshift import shift
from nnshift.artifacts import read_artifact, seal, write_artifact
from nnshift.concepts import ConceptDictionary
from nnshift.errors import ArtifactError, NnshiftError
from nnshift.shift.report import json_safe
from nnshift.steering import SteeringVector
from nnshift.steering.vectors import load_vectors, save_vectors
from nnshift.store import Activations

# ----------------------------------------------------------------------------------------------- the artifact types


def _acts(t: torch.Tensor, prefix: str = "s") -> Activations:
    return Activations(t, ids=[f"{prefix}{i}" for i in range(t.shape[0])], info={"model": "toy", "layer": 2})


def _world(seed: int = 3, m: int = 24, d: int = 6, k: int = 4) -> tuple[Activations, Activations, Any, Any]:
    """Paired activations with per-cluster shifts; the last original concept is far away, so it is empty."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(k, d, generator=g)
    lab = torch.arange(m) % (k - 1)
    a = centres[lab] + 0.5 * torch.randn(m, d, generator=g)
    b = a + torch.randn(k, d, generator=g)[lab] + 0.3 * torch.randn(m, d, generator=g)
    u_a = centres.clone()
    u_a[-1] = 100.0
    u_b = centres + 0.5 * torch.randn(k, d, generator=g)
    dico_a = ConceptDictionary.from_concepts(u_a, method="kmeans")
    dico_b = ConceptDictionary.from_concepts(u_b, method="kmeans")
    return _acts(a), _acts(b), dico_a, dico_b


def _ground(u: torch.Tensor) -> list[list[str]]:
    w = torch.randn(30, u.shape[1], generator=torch.Generator().manual_seed(0))
    return [[f"w{i}" for i in row] for row in (u @ w.T).topk(5, dim=1).indices.tolist()]


def _make_shift() -> shift.ShiftReport:
    a, b, dico_a, dico_b = _world()
    return shift.analyze(a, b, dico_a, dico_b, ground=_ground, n_mas=3)


def _eq_nan(x: torch.Tensor, y: torch.Tensor) -> bool:
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if not x.is_floating_point():
        return torch.equal(x, y)
    return torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(0.0), y.nan_to_num(0.0))


def _same_dico(x: ConceptDictionary, y: ConceptDictionary) -> None:
    assert torch.equal(x.concepts, y.concepts) and x.method == y.method
    assert (x.codes is None and y.codes is None) or torch.equal(x.codes, y.codes)
    assert set(x.state) == set(y.state) and all(torch.equal(x.state[k], y.state[k]) for k in x.state)
    assert json.loads(json.dumps([x.params, x.info], default=str)) == json.loads(
        json.dumps([y.params, y.info], default=str)
    )


def _same_vector(x: SteeringVector, y: SteeringVector) -> None:
    assert torch.equal(x.vector, y.vector) and x.layer == y.layer and x.method == y.method and x.info == y.info


def _same_vectors(x: dict[Any, SteeringVector], y: dict[Any, SteeringVector]) -> None:
    assert list(x) == list(y)
    for key in x:
        _same_vector(x[key], y[key])


def _same_shift(x: shift.ShiftReport, y: shift.ShiftReport) -> None:
    for name in shift._TENSORS:
        assert _eq_nan(getattr(x, name), getattr(y, name)), name
    for name in ("alpha", "ids", "dynamics", "thresholds", "words_original", "words_shifted", "words_finetuned"):
        assert getattr(x, name) == getattr(y, name), name
    assert json.dumps(json_safe(x.correlations)) == json.dumps(json_safe(y.correlations))


def _same_acts(x: Activations, y: Activations) -> None:
    assert torch.equal(x.tensor, y.tensor) and x.ids == y.ids and x.answers == y.answers and x.info == y.info


@dataclass
class Kind:
    """One artifact type: how to make, save, load and compare it, and its file stem."""

    name: str
    stem: str
    make: Callable[[], Any]
    save: Callable[[Any, Path], Any]
    load: Callable[[Path], Any]
    same: Callable[[Any, Any], None]


def _kmeans() -> ConceptDictionary:
    return ns.concepts.fit(torch.randn(20, 5, generator=torch.Generator().manual_seed(1)), k=3, method="kmeans")


def _pca() -> ConceptDictionary:
    return ns.concepts.fit(torch.randn(20, 5, generator=torch.Generator().manual_seed(2)) + 4.0, k=2, method="pca")


def _vector() -> SteeringVector:
    return SteeringVector(torch.tensor([0.5, -1.25, 3.0, 1e-3]), layer=2, method="given", info={"name": "x"})


def _vectors() -> dict[Any, SteeringVector]:
    u = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    return {(0, 1): SteeringVector(u[1] - u[0], 1, "fine"), "yes->no": SteeringVector(u[2], None, "coarse")}


KINDS = [
    Kind(
        "activations",
        "activations",
        lambda: _acts(torch.randn(5, 3)),
        lambda o, p: o.save(p),
        Activations.load,
        _same_acts,
    ),
    Kind("kmeans", "concepts", _kmeans, lambda o, p: o.save(p), ConceptDictionary.load, _same_dico),
    Kind("pca", "concepts", _pca, lambda o, p: o.save(p), ConceptDictionary.load, _same_dico),
    Kind("vector", "vector", _vector, lambda o, p: o.save(p), SteeringVector.load, _same_vector),
    Kind("vectors", "vectors", _vectors, lambda o, p: save_vectors(o, p), load_vectors, _same_vectors),
    Kind("shift", "shift", _make_shift, lambda o, p: o.save(p), shift.ShiftReport.load, _same_shift),
]
IDS = [k.name for k in KINDS]


@pytest.fixture(params=KINDS, ids=IDS)
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Kind, Any, Path]:
    """(kind, original object, folder it was saved to)."""
    kind: Kind = request.param
    obj = kind.make()
    kind.save(obj, tmp_path / "a")
    return kind, obj, tmp_path / "a"


def _refused(kind: Kind, folder: Path, match: str | None = None) -> ArtifactError:
    with pytest.raises(ArtifactError, match=match) as info:
        kind.load(folder)
    assert info.value.hint, "every refusal says what to do"
    return info.value


def _rewrite(kind: Kind, folder: Path, edit: Callable[[dict[str, torch.Tensor], dict[str, Any]], None]) -> None:
    """Change the tensors / document and write them back as a valid artifact (checksums all correct)."""
    tensors, doc = read_artifact(folder, kind.stem, 9, finite=False)
    edit(tensors, doc)
    version = json.loads((folder / f"{kind.stem}.json").read_text())["format_version"]
    write_artifact(folder, kind.stem, version, tensors, doc)


def _reseal(folder: Path, stem: str, edit: Callable[[dict[str, Any]], Any]) -> None:
    man = json.loads((folder / f"{stem}.json").read_text())
    out = edit(man)
    (folder / f"{stem}.json").write_text(json.dumps(seal(man if out is None else out)))


# ----------------------------------------------------------------------------------------------- round trip, files


def test_roundtrip_is_exact(saved: tuple[Kind, Any, Path]) -> None:
    kind, obj, folder = saved
    kind.same(obj, kind.load(folder))
    man = json.loads((folder / f"{kind.stem}.json").read_text())
    assert man["format"] == f"nnshift.{kind.stem}" and man["format_version"] == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{kind.stem}.json", f"{kind.stem}.safetensors"])


def test_files_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        for n, kind in enumerate(KINDS):
            kind.save(kind.make(), tmp_path / str(n))
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2 * len(KINDS)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o644 for p in files}


@pytest.mark.parametrize("which", ["json", "safetensors"])
def test_one_flipped_byte_anywhere_is_refused(saved: tuple[Kind, Any, Path], which: str) -> None:
    kind, _, folder = saved
    file = folder / f"{kind.stem}.{which}"
    data = file.read_bytes()
    positions = sorted({*range(0, len(data), max(1, len(data) // 40)), len(data) - 1})
    if which == "json":  # the self-checksum's own key: a renamed key must not switch the check off
        positions.append(data.index(b"manifest_sha256"))
    for pos in positions:
        file.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :])
        _refused(kind, folder)
    file.write_bytes(data)
    kind.load(folder)


def test_one_flipped_byte_in_a_dictionary_changes_no_concept_silently(tmp_path: Path) -> None:
    d = _kmeans()
    d.save(tmp_path / "d")
    file = tmp_path / "d" / "concepts.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x10  # a byte of the last tensor value (safetensors keeps the data after the header)
    file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="fails its checksum"):
        ConceptDictionary.load(tmp_path / "d")


@pytest.mark.parametrize("which", ["json", "safetensors"])
def test_truncated_or_deleted_file_is_refused(saved: tuple[Kind, Any, Path], which: str) -> None:
    kind, _, folder = saved
    file = folder / f"{kind.stem}.{which}"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    _refused(kind, folder)
    file.write_bytes(b"")
    _refused(kind, folder)
    file.unlink()
    assert "missing" in str(_refused(kind, folder))


# ----------------------------------------------------------------------------------------------- manifest fields


def test_newer_version_says_so(saved: tuple[Kind, Any, Path]) -> None:
    kind, _, folder = saved
    _reseal(folder, kind.stem, lambda m: m.update(format_version=99))
    _refused(kind, folder, "written by a newer nnshift")


def test_a_tensor_shape_in_the_manifest_is_checked(saved: tuple[Kind, Any, Path]) -> None:
    kind, _, folder = saved

    def edit(m: dict[str, Any]) -> None:
        spec = next(iter(m["tensors"].values()))
        spec["shape"] = [*spec["shape"][:-1], spec["shape"][-1] + 1]

    _reseal(folder, kind.stem, edit)
    _refused(kind, folder, "manifest says")


def test_an_unsealed_field_change_is_refused(saved: tuple[Kind, Any, Path]) -> None:
    kind, _, folder = saved
    man = json.loads((folder / f"{kind.stem}.json").read_text())
    man["doc"]["info" if "info" in man["doc"] else "vectors"] = {}
    (folder / f"{kind.stem}.json").write_text(json.dumps(man))
    _refused(kind, folder, "changed after it was written")


@pytest.mark.parametrize(
    "content", ["null", "[]", "{}", "3", '"x"', '{"format": "nnshift.other", "format_version": 2}']
)
def test_structurally_broken_json_is_a_clear_error(saved: tuple[Kind, Any, Path], content: str) -> None:
    kind, _, folder = saved
    (folder / f"{kind.stem}.json").write_text(content)
    _refused(kind, folder)


BAD_VALUES = [None, [], {}, "x", 1.5, -1, True, [[1]], {"a": None}]


def test_every_doc_field_dropped_or_retyped_loads_or_is_a_clear_error(saved: tuple[Kind, Any, Path]) -> None:
    """Property: each field of the document removed, or replaced by each of BAD_VALUES -> a valid object or an
    NnshiftError with a hint; never KeyError / TypeError / AttributeError. Required fields must be refused."""
    kind, obj, folder = saved
    file = folder / f"{kind.stem}.json"
    clean = file.read_bytes()
    keys = list(json.loads(clean)["doc"])
    refused = set()
    for key in keys:
        for value in [..., *BAD_VALUES]:
            man = json.loads(clean)
            if value is ...:
                del man["doc"][key]
            else:
                man["doc"][key] = value
            file.write_text(json.dumps(seal(man)))
            try:
                kind.load(folder)
            except NnshiftError as exc:
                assert exc.hint, (key, value)
                if value is ...:
                    refused.add(key)
    required = {
        "activations": {"ids"},
        "concepts": {"method"},
        "vector": {"dim", "norm"},
        "vectors": {"vectors"},
        "shift": {"alpha", "ids", "dynamics", "thresholds", "correlations"},
    }[kind.stem]
    assert required <= refused
    file.write_bytes(clean)
    kind.same(obj, kind.load(folder))


# ----------------------------------------------------------------------------------------------- content checks


def test_nan_in_a_tensor_is_refused(saved: tuple[Kind, Any, Path]) -> None:
    kind, _, folder = saved
    name = {"activations": "tensor", "concepts": "concepts", "vector": "vector", "vectors": "v0"}.get(
        kind.stem, "recovery_original"
    )

    def edit(t: dict[str, torch.Tensor], _: dict[str, Any]) -> None:
        t[name] = t[name].clone()
        t[name].view(-1)[0] = math.inf

    _rewrite(kind, folder, edit)
    _refused(kind, folder, "NaN or Inf")


def test_dictionary_k_and_d_are_checked(tmp_path: Path) -> None:
    kind = KINDS[IDS.index("pca")]
    d = _pca()
    for n, edit in enumerate(
        [
            lambda t, doc: doc.update(k=3),
            lambda t, doc: doc.update(dim=4),
            lambda t, doc: doc.update(rows=19),
            lambda t, doc: t.update(codes=t["codes"][:, :1].clone()),
            lambda t, doc: t.update({"state.mean": t["state.mean"][:4].clone()}),
            lambda t, doc: t.pop("state.mean"),
            lambda t, doc: t.pop("concepts"),
            lambda t, doc: t.update(extra=torch.zeros(2)),
            lambda t, doc: t.update(concepts=t["concepts"].double()),
            lambda t, doc: doc.update(method="no-such-method-but-a-string") or t.pop("state.mean"),
        ]
    ):
        folder = tmp_path / str(n)
        d.save(folder)
        _rewrite(kind, folder, edit)
        if n == 8:  # float64 concepts: a valid dictionary, still loads exactly
            assert ConceptDictionary.load(folder).concepts.dtype == torch.float64
            continue
        if n == 9:  # an unregistered method: loads (transform needs it registered), nothing to check
            assert ConceptDictionary.load(folder).method == "no-such-method-but-a-string"
            continue
        err = _refused(kind, folder)
        expect = ["k = 3", "dim = 4", "rows = 19", "codes have shape", "hidden size D", "needs its state"]
        expect += ["'concepts' is required", "unknown"]
        assert expect[n] in str(err), (n, str(err))


def test_vector_dim_and_norm_are_checked(tmp_path: Path) -> None:
    kinds = {k.name: k for k in KINDS}
    v = _vector()
    v.save(tmp_path / "dim")
    _rewrite(kinds["vector"], tmp_path / "dim", lambda t, doc: doc.update(dim=5))
    _refused(kinds["vector"], tmp_path / "dim", "dim = 5")
    v.save(tmp_path / "norm")
    _rewrite(kinds["vector"], tmp_path / "norm", lambda t, doc: doc.update(norm=2 * doc["norm"]))
    _refused(kinds["vector"], tmp_path / "norm", "norm")
    v.save(tmp_path / "t")  # the tensor changed (and re-checksummed): the JSON's norm no longer matches
    _rewrite(kinds["vector"], tmp_path / "t", lambda t, doc: t.update(vector=2 * t["vector"]))
    _refused(kinds["vector"], tmp_path / "t", "norm")
    v.save(tmp_path / "2d")
    _rewrite(kinds["vector"], tmp_path / "2d", lambda t, doc: t.update(vector=t["vector"][None]))
    _refused(kinds["vector"], tmp_path / "2d", "not \\[D\\]")
    many = _vectors()
    for n, edit in enumerate(
        [
            lambda t, doc: doc["vectors"][1].update(norm=1e3),
            lambda t, doc: doc["vectors"][1].update(tensor="v0"),
            lambda t, doc: doc["vectors"][1].update(key=[0, 1]),
            lambda t, doc: doc["vectors"].pop(),
            lambda t, doc: doc["vectors"][0].update(key=[[0], 1]),
        ]
    ):
        save_vectors(many, tmp_path / f"m{n}")
        _rewrite(kinds["vectors"], tmp_path / f"m{n}", edit)
        err = _refused(kinds["vectors"], tmp_path / f"m{n}")
        assert ["norm", "used twice", "repeats the key", "no entry names", "not a name"][n] in str(err)


def test_shift_report_content_is_checked(tmp_path: Path) -> None:
    kind = KINDS[IDS.index("shift")]
    rep = _make_shift()
    empty = int(rep.empty[0])
    assert math.isnan(float(rep.consistency[empty])), "the world has an empty concept"
    full = int(rep.counts.argmax())
    cases: list[tuple[Callable[[dict[str, torch.Tensor], dict[str, Any]], Any], str | None]] = [
        (lambda t, d: t.update(matching=torch.zeros_like(t["matching"])), "not a permutation"),
        (lambda t, d: t.update(greedy_matching=t["greedy_matching"] + 10), "outside"),
        (lambda t, d: t.update(mas_original=t["mas_original"] + 1000), "outside"),
        (lambda t, d: t.update(counts=t["counts"] + 1), "do not follow"),
        (lambda t, d: d.update(ids=d["ids"][:-1]), "'assignment' has shape"),
        (lambda t, d: t.update(similarity=t["similarity"][:, :-1].clone()), "'similarity' has shape"),
        (lambda t, d: t.update(matching=t["matching"].float()), "not an integer type"),
        (lambda t, d: t.update(recovery_original=t["recovery_original"].long()), "not a floating type"),
        (lambda t, d: d.update(dynamics=d["dynamics"][:-1]), "dynamics"),
        (lambda t, d: d.update(dynamics=["grown"] * len(d["dynamics"])), "dynamics"),
        (lambda t, d: d.update(words_original=[["a"]]), "word list"),
        (lambda t, d: d.update(thresholds={"nope": 1.0}), "thresholds"),
        (lambda t, d: d.update(kind="other"), "kind"),
        (lambda t, d: t.pop("similarity"), "lacks tensors"),
        (lambda t, d: t.update(consistency=_set(t["consistency"], full, math.nan)), "NaN or Inf"),
        (lambda t, d: t.update(t_overlap_original=_set(t["t_overlap_original"], 0, math.inf)), "NaN or Inf"),
        # NaN where it means "not measured": still a valid report
        (lambda t, d: t.update(t_overlap_original=_set(t["t_overlap_original"], 0, math.nan)), None),
        (lambda t, d: t.update(mean_sample_shift=_set(t["mean_sample_shift"], empty, math.nan)), None),
    ]
    for n, (edit, match) in enumerate(cases):
        folder = tmp_path / str(n)
        rep.save(folder)
        _rewrite(kind, folder, edit)
        if match is None:
            assert shift.ShiftReport.load(folder).k == rep.k
        else:
            _refused(kind, folder, match)


def _set(t: torch.Tensor, i: int, value: float) -> torch.Tensor:
    t = t.clone()
    t[i] = value
    return t


# ----------------------------------------------------------------------------------------------- legacy (format 1)


def _write_legacy(kind: Kind, folder: Path, tmp: Path) -> None:
    """The format 1 layout: the document at the top level of <stem>.json with format_version 1, no checksums."""
    tensors, doc = read_artifact(folder, kind.stem, 9, finite=False)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / f"{kind.stem}.safetensors"))
    (tmp / f"{kind.stem}.json").write_text(json.dumps({**doc, "format_version": 1}))


def test_format_1_folders_still_load_and_are_checked(saved: tuple[Kind, Any, Path], tmp_path: Path) -> None:
    kind, obj, folder = saved
    _write_legacy(kind, folder, tmp_path / "old")
    kind.same(obj, kind.load(tmp_path / "old"))
    doc = json.loads((tmp_path / "old" / f"{kind.stem}.json").read_text())
    (tmp_path / "old" / f"{kind.stem}.json").write_text(json.dumps({**doc, "format_version": 99}))
    _refused(kind, tmp_path / "old", "written by a newer nnshift")
    (tmp_path / "old" / f"{kind.stem}.json").write_text(json.dumps(doc))
    tensors = dict(read_artifact(folder, kind.stem, 9, finite=False)[0])
    name = next(n for n, t in tensors.items() if t.is_floating_point() and not n.startswith("t_overlap"))
    tensors[name] = _set(tensors[name].reshape(-1), 0, math.nan).reshape(tensors[name].shape)
    save_file(tensors, str(tmp_path / "old" / f"{kind.stem}.safetensors"))
    _refused(kind, tmp_path / "old", "NaN")
    (tmp_path / "old" / f"{kind.stem}.safetensors").write_bytes(b"garbage")
    _refused(kind, tmp_path / "old")


def test_format_1_pca_without_its_mean_is_refused(tmp_path: Path) -> None:
    kind = KINDS[IDS.index("pca")]
    _pca().save(tmp_path / "new")
    _write_legacy(kind, tmp_path / "new", tmp_path / "old")
    tensors = read_artifact(tmp_path / "new", "concepts", 9)[0]
    save_file({k: v for k, v in tensors.items() if k != "state.mean"}, str(tmp_path / "old" / "concepts.safetensors"))
    _refused(kind, tmp_path / "old", r"needs its state \['mean'\]")
