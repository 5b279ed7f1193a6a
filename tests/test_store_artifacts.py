"""Artifact I/O and the shard store without a model: checksums, versions, shapes, modes, names, lock, repair."""

import json
import os
import socket
import stat

import pytest
import torch

import nnshift as ns
from nnshift.artifacts import DirLock, atomic_write_bytes, read_artifact, seal, write_artifact
from nnshift.errors import ArtifactError, CorruptStoreError, DataFormatError, StoreError
from nnshift.store import ActivationStore, load_activations, repair_store, row_id, sample_id_of, verify_store

KEY = {"model": "m", "layers": [0], "hidden_size": 3}


def _append(store, sids, value=0.0, rows_per=1):
    ids = [row_id(s, j if rows_per > 1 else None) for s in sids for j in range(rows_per)]
    t = torch.arange(len(ids) * 3, dtype=torch.float32).reshape(-1, 3) + value
    store.append({"layer_0": t}, ids, [s for s in sids for _ in range(rows_per)], ["a"] * len(ids), [{}] * len(ids), [])


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_gives_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.bin", b"y")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.bin") == 0o644 and _mode(tmp_path / "b.bin") == 0o600
    assert (tmp_path / "a.bin").read_bytes() == b"x" and not list(tmp_path.glob(".*.tmp"))


def test_artifact_roundtrip_and_manifest(tmp_path):
    t = {"w": torch.randn(4, 2), "i": torch.arange(3)}
    write_artifact(tmp_path, "thing", 3, t, {"name": "x"})
    back, doc = read_artifact(tmp_path, "thing", 3)
    assert doc == {"name": "x"} and torch.equal(back["w"], t["w"]) and torch.equal(back["i"], t["i"])
    man = json.loads((tmp_path / "thing.json").read_text())
    assert man["format"] == "nnshift.thing" and man["format_version"] == 3
    assert man["tensors"]["w"] == {"shape": [4, 2], "dtype": "float32"}
    assert len(man["files"]["thing.safetensors"]) == 64


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["doc"].update(name="y"), "changed after it was written"),
        (lambda m: seal({**m, "format_version": 99}), "newer nnshift"),
        (lambda m: seal({**m, "tensors": {"w": {"shape": [4, 3], "dtype": "float32"}}}), "manifest says"),
        (lambda m: seal({**m, "tensors": {"w": {"shape": [4, 2], "dtype": "float16"}}}), "manifest says"),
        (lambda m: seal({**m, "files": {"thing.safetensors": "0" * 64}}), "fails its checksum"),
        (lambda m: seal({**m, "format": "nnshift.other"}), "not a"),
        (lambda m: seal({k: v for k, v in m.items() if k != "doc"}), "lacks"),
        (lambda m: [], "not a JSON object"),
    ],
)
def test_artifact_tampering_is_refused(tmp_path, edit, match):
    write_artifact(tmp_path, "thing", 1, {"w": torch.ones(4, 2)}, {"name": "x"})
    man = json.loads((tmp_path / "thing.json").read_text())
    out = edit(man)
    (tmp_path / "thing.json").write_text(json.dumps(man if out is None else out))
    with pytest.raises(ArtifactError, match=match):
        read_artifact(tmp_path, "thing", 1)


def test_artifact_nonfinite_truncated_missing(tmp_path):
    write_artifact(tmp_path / "nan", "thing", 1, {"w": torch.tensor([1.0, float("nan")])}, {})
    with pytest.raises(ArtifactError, match="NaN"):
        read_artifact(tmp_path / "nan", "thing", 1)
    write_artifact(tmp_path / "t", "thing", 1, {"w": torch.ones(8)}, {})
    f = tmp_path / "t" / "thing.safetensors"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(ArtifactError, match="checksum"):
        read_artifact(tmp_path / "t", "thing", 1)
    f.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        read_artifact(tmp_path / "t", "thing", 1)
    assert issubclass(ArtifactError, CorruptStoreError) and issubclass(ArtifactError, DataFormatError)


def test_activations_save_is_verified_and_legacy_loads(tmp_path):
    a = ns.Activations(torch.randn(3, 4), ids=["x", "y", "z"], skipped=["w"])
    a.save(tmp_path / "a")
    assert _mode(tmp_path / "a" / "activations.json") == 0o666 & ~_umask()
    b = ns.Activations.load(tmp_path / "a")
    assert torch.equal(a.tensor, b.tensor) and b.skipped == ["w"]
    doc = json.loads((tmp_path / "a" / "activations.json").read_text())
    doc["doc"]["ids"] = ["x", "y", "q"]
    (tmp_path / "a" / "activations.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match="checksum"):
        ns.Activations.load(tmp_path / "a")
    # format_version 1 (no checksums) is still read; a newer version is refused
    from safetensors.torch import save_file

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file({"tensor": a.tensor}, str(legacy / "activations.safetensors"))
    old = {"format_version": 1, "ids": a.ids, "answers": a.answers, "meta": a.meta, "info": {}, "skipped": []}
    (legacy / "activations.json").write_text(json.dumps(old))
    assert torch.equal(ns.load_activations(legacy).tensor, a.tensor)
    (legacy / "activations.json").write_text(json.dumps({**old, "format_version": 99}))
    with pytest.raises(ArtifactError, match="newer nnshift"):
        ns.load_activations(legacy)
    (legacy / "activations.json").write_text(json.dumps({**old, "ids": ["x"]}))
    with pytest.raises(ArtifactError, match="inconsistent"):
        ns.load_activations(legacy)


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_row_id_rule():
    assert row_id("s0", 3) == "s0#3" and row_id("s0") == "s0"
    assert sample_id_of("s0#3") == "s0" and sample_id_of("s0#g1") == "s0" and sample_id_of("s0") == "s0"
    assert sample_id_of("a#b#3") == "a#b" and sample_id_of("a#b", {"a#b"}) == "a#b"


def test_select_and_pair_on_multi_position_rows():
    samples = [ns.Sample(id=f"s{i}", prompt="p") for i in range(3)]
    ids = [row_id(f"s{i}", p) for i in range(3) for p in range(2)]
    a = ns.Activations(torch.randn(6, 2), ids=ids, samples=list(samples), skipped=["s9"])
    sub = a.select([5, 0])
    assert sub.ids == ["s2#1", "s0#0"] and [s.id for s in sub.samples] == ["s2", "s0"] and sub.skipped == ["s9"]
    b = ns.Activations(torch.randn(2, 2), ids=["s1#0", "s2#1"])
    pa, pb = ns.pair(a, b)
    assert pa.ids == pb.ids == ["s1#0", "s2#1"] and [s.id for s in pa.samples] == ["s1", "s2"]
    assert torch.equal(pa.tensor, a.tensor[[2, 5]])


def test_shard_names_are_never_reused(tmp_path):
    with ActivationStore(tmp_path, KEY, expected=4) as st:
        for i in range(3):
            _append(st, [f"s{i}"], value=10.0 * i)
    good = (tmp_path / "shard-00002.safetensors").read_bytes()
    (tmp_path / "shard-00001.safetensors").write_bytes(b"garbage")
    dropped = repair_store(tmp_path)
    assert len(dropped) == 1 and "shard-00001" in dropped[0] and "checksum" in dropped[0]
    assert verify_store(tmp_path) == []
    with ActivationStore(tmp_path, KEY, expected=4) as st:
        assert st.done_ids == {"s0", "s2"}
        _append(st, ["s1", "s3"], value=100.0)
        assert st.doc["shards"][-1]["file"] == "shard-00003.safetensors"
    assert (tmp_path / "shard-00002.safetensors").read_bytes() == good
    assert sorted(load_activations(tmp_path, allow_partial=True).ids) == ["s0", "s1", "s2", "s3"]


def test_partial_store_is_refused_with_counts(tmp_path):
    with ActivationStore(tmp_path, KEY, expected=5) as st:
        _append(st, ["a", "b"])
        st.append({"layer_0": torch.zeros(0, 3)}, [], [], [], [], ["c"])
    with pytest.raises(StoreError, match=r"3 of 5 samples \(kept / expected\)") as exc:
        load_activations(tmp_path)
    assert "allow_partial" in exc.value.hint
    part = load_activations(tmp_path, allow_partial=True)
    assert part.ids == ["a", "b"] and part.skipped == ["c"] and part.info["complete"] is False


def test_store_lock_second_writer_and_stale_takeover(tmp_path):
    st = ActivationStore(tmp_path, KEY)
    with pytest.raises(StoreError, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
        ActivationStore(tmp_path, KEY)
    with pytest.raises(StoreError, match="being written"):
        repair_store(tmp_path)
    st.close()
    assert not (tmp_path / ".lock").exists()
    # a lock left by a dead process on this host is taken over
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "x"}))
    with ActivationStore(tmp_path, KEY) as st2:
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid() and st2.lock.held
    # another host's lock is never taken over; an empty lock file is, once it is old
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "host": "elsewhere", "started": "x"}))
    with pytest.raises(StoreError, match="elsewhere"):
        ActivationStore(tmp_path, KEY)
    (tmp_path / ".lock").write_text("")
    with pytest.raises(StoreError):
        DirLock(tmp_path).acquire()
    os.utime(tmp_path / ".lock", (0, 0))
    DirLock(tmp_path).acquire().release()


def test_capture_folder_holding_something_else_is_refused(tmp_path):
    ns.Activations(torch.ones(1, 3), ids=["a"]).save(tmp_path / "acts")
    with pytest.raises(StoreError, match=r"Activations\.save folder"):
        ActivationStore(tmp_path / "acts", KEY)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match=r"notes\.txt"):
        ActivationStore(tmp_path / "other", KEY)


def test_verify_lists_every_problem_and_manifest_checks(tmp_path):
    with ActivationStore(tmp_path, KEY, expected=3) as st:
        for s in ["a", "b", "c"]:
            _append(st, [s])
        st.finish()
    assert verify_store(tmp_path) == []
    (tmp_path / "shard-00000.safetensors").unlink()
    f = tmp_path / "shard-00001.safetensors"
    f.write_bytes(f.read_bytes()[:-4])
    problems = verify_store(tmp_path)
    assert len(problems) == 2 and "shard-00000.safetensors is missing" in problems[0]
    assert "shard-00001.safetensors fails its checksum" in problems[1]
    with pytest.raises(CorruptStoreError, match="shard-00000") as exc:
        load_activations(tmp_path)
    assert "repair" in exc.value.hint
    man = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**man, "done": False}))
    assert "changed after it was written" in verify_store(tmp_path)[0]
    (tmp_path / "manifest.json").write_text(json.dumps(seal({**man, "format_version": 99})))
    assert "newer nnshift" in verify_store(tmp_path)[0]
    (tmp_path / "manifest.json").write_text(json.dumps(seal({**man, "shards": [{"file": 3}]})))
    with pytest.raises(ArtifactError, match=r"shards\[0\]"):
        load_activations(tmp_path)
    with pytest.raises(CorruptStoreError):
        repair_store(tmp_path)


def test_manifest_cannot_point_outside_the_folder(tmp_path):
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"keep me")
    out = tmp_path / "s"
    with ActivationStore(out, KEY, expected=1) as st:
        _append(st, ["a"])
    man = json.loads((out / "manifest.json").read_text())
    man["shards"][0]["file"] = "../victim.safetensors"
    (out / "manifest.json").write_text(json.dumps(seal(man)))
    assert "shards[0].file" in verify_store(out)[0]
    with pytest.raises(CorruptStoreError):
        repair_store(out)
    assert victim.read_bytes() == b"keep me"


def test_shard_of_another_hidden_size_is_named(tmp_path):
    with ActivationStore(tmp_path, {**KEY, "hidden_size": 5}, expected=1) as st:
        _append(st, ["a"])
        st.finish()
    assert "not 1 rows of size 5" in verify_store(tmp_path)[0]


def test_repair_of_a_missing_folder_creates_nothing(tmp_path):
    with pytest.raises(CorruptStoreError, match="not an activation store"):
        repair_store(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    assert "not an activation store" in verify_store(tmp_path / "nope")[0]
