"""Fault suite for the capture store: kill -9 at random points then resume, two writers, damaged files, repair.

The fast versions run by default; ``pytest -m faults tests/test_store_faults.py`` runs the long kill series
(12 kills in a row). Captures are killed in forked children (no interpreter start-up per kill).
"""

import os
import random
import shutil
import signal
import time
import warnings

import pytest
import torch

import nnshift as ns
from nnshift import positions as P
from nnshift.errors import CorruptStoreError, StoreError
from nnshift.models import load
from nnshift.models.testing import build_tiny, tiny_image
from nnshift.store import ActivationStore, load_activations, repair_store, verify_store

warnings.filterwarnings("ignore")
KW = {"layer": [0, -1], "at": P.generated(reduce="mean"), "max_new_tokens": 3, "batch_size": 2, "shard_size": 2}


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return load(build_tiny("llava", tmp_path_factory.mktemp("llava")))


@pytest.fixture(scope="module")
def samples():
    prompts = ["what color is the circle", "how many", "is there a red square", "what"]
    return [ns.Sample(id=f"s{i}", prompt=prompts[i % 4], image=tiny_image(i)) for i in range(12)]


@pytest.fixture(scope="module")
def full(vlm, samples):
    start = time.perf_counter()
    acts = ns.capture(vlm, samples, progress=False, **KW)
    acts[0].info["seconds"] = time.perf_counter() - start
    return acts


def _in_child(fn) -> int:
    """Run ``fn`` in a forked child that never returns into pytest; its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _killed_capture(vlm, samples, out, k: int, after: bool) -> int:
    """A child capture that SIGKILLs itself at its ``k``-th atomic rename (just before it, or just after)."""

    def run():
        real = os.replace
        count = {"n": 0}

        def replace(src, dst):
            count["n"] += 1
            if count["n"] == k and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
            if count["n"] == k and after:
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace
        ns.capture(vlm, samples, out=out, progress=False, **KW)

    return _in_child(run)


def _assert_same(resumed, full):
    for layer in full:
        assert resumed[layer].ids == full[layer].ids and len(set(resumed[layer].ids)) == len(full[layer].ids)
        assert torch.equal(resumed[layer].tensor, full[layer].tensor)
        assert resumed[layer].answers == full[layer].answers


def _kill_series(vlm, samples, full, out, n_kills: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    log = []
    for i in range(n_kills):
        stored = ActivationStore.open(out).done_ids if (out / "manifest.json").exists() else set()
        left = len(samples) - len(stored)
        if i % 3 == 2:  # a kill from outside at a random time, before the remaining work is likely done
            pid = _in_child(lambda: ns.capture(vlm, samples, out=out, progress=False, **KW))
            time.sleep(rng.uniform(0.0, 0.7 * full[0].info["seconds"] * left / len(samples)))
            os.kill(pid, signal.SIGKILL)
            how = "timer"
        else:  # a kill at a random atomic rename: shard written but not listed, manifest half-replaced, ...
            shards_left = -(-left // KW["shard_size"])
            k, after = rng.randint(1, 2 + 2 * shards_left), rng.random() < 0.5
            pid = _killed_capture(vlm, samples, out, k, after)
            how = f"rename {k} {'after' if after else 'before'}"
        _, status = os.waitpid(pid, 0)
        log.append(f"{how}: {'killed' if os.WIFSIGNALED(status) else 'finished'}")
        assert verify_store(out) == [] if (out / "manifest.json").exists() else True
    resumed = ns.capture(vlm, samples, out=out, progress=False, **KW)
    _assert_same(resumed, full)
    assert verify_store(out) == [] and ActivationStore.open(out).done
    assert not (out / ".lock").exists()
    return log


def test_kill_9_three_times_then_resume_is_bit_identical(vlm, samples, full, tmp_path):
    log = _kill_series(vlm, samples, full, tmp_path / "s", n_kills=3, seed=0)
    assert sum("killed" in x for x in log) >= 2, log


@pytest.mark.faults
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_twelve_times_in_a_row_then_resume(vlm, samples, full, tmp_path, seed, request):
    if "faults" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long kill series runs with -m faults")
    log = _kill_series(vlm, samples, full, tmp_path / "s", n_kills=12, seed=seed)
    print(f"seed {seed}:", "; ".join(log))
    assert sum("killed" in x for x in log) >= 10, log


def test_two_writers(vlm, samples, full, tmp_path):
    out = tmp_path / "s"
    slow = ActivationStore.append

    def run():
        def append(self, *a, **k):
            time.sleep(0.3)
            slow(self, *a, **k)

        ActivationStore.append = append
        ns.capture(vlm, samples, out=out, progress=False, **KW)

    pid = _in_child(run)
    deadline = time.time() + 60
    while not (out / ".lock").exists() and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(StoreError, match=rf"pid {pid} on .*since") as exc:
        ns.capture(vlm, samples, out=out, progress=False, **KW)
    assert "wait for it to finish" in exc.value.hint
    with pytest.raises(StoreError, match=f"pid {pid}"):
        repair_store(out)
    os.kill(pid, signal.SIGKILL)  # the holder dies: its lock is taken over
    os.waitpid(pid, 0)
    assert (out / ".lock").exists()
    _assert_same(ns.capture(vlm, samples, out=out, progress=False, **KW), full)


@pytest.fixture(scope="module")
def clean_store(vlm, samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "s"
    ns.capture(vlm, samples[:6], out=out, progress=False, **KW)
    return out


def _damage(file, how):
    if how == "delete":
        file.unlink()
    elif how == "truncate":
        file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])
    else:
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0x01
        file.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("name", ["manifest.json", "shard-00000.safetensors", "shard-00002.safetensors"])
def test_every_store_file_damaged(vlm, samples, clean_store, tmp_path, name, how):
    out = tmp_path / "s"
    shutil.copytree(clean_store, out)
    reference = {layer: load_activations(clean_store, layer) for layer in (0, 1)}
    _damage(out / name, how)
    problems = verify_store(out)
    assert problems and (name in problems[0] or "manifest" in problems[0]), problems
    with pytest.raises(CorruptStoreError):
        load_activations(out, 0)
    if name == "manifest.json":
        with pytest.raises(CorruptStoreError):
            repair_store(out)
        with pytest.raises(CorruptStoreError):
            ns.capture(vlm, samples[:6], out=out, progress=False, **KW)
        return
    dropped = repair_store(out)
    assert len(dropped) == 1 and name in dropped[0]
    assert verify_store(out) == []
    with pytest.raises(StoreError, match="4 of 6"):
        load_activations(out, 0)
    resumed = ns.capture(vlm, samples[:6], out=out, progress=False, **KW)
    for layer in (0, 1):
        order = [resumed[layer].ids.index(i) for i in reference[layer].ids]
        assert torch.equal(resumed[layer].tensor[order], reference[layer].tensor)
    assert verify_store(out) == []
