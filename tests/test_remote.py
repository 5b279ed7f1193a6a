"""nnshift with ``remote=True`` against a real local NDIF server (tests marked ``ndif``).

The module fixture starts a loopback-only NDIF 0.1.2 stack (tests/ndif/local_server.py: redis, a Ray head,
ndif's controller and API, in a private network namespace), serves two tiny float32 models from local
folders (a text Llama and a LLaVA), and stops everything it started when the module ends, even on failure.
The server cannot import nnshift (as on a real NDIF), so a remote trace ships only tensors, nnsight
operations and nnshift's own code by value (``nnsight.register(nnshift)``). The remote runs happen in a
plain Python process (tests/ndif/remote_client.py): under pytest, jaxtyping's instrumentation makes nnshift's
functions unpicklable. The cases are defined once (tests/ndif/remote_cases.py).

Each test compares the remote run with the same run done locally, here: saved hidden states must be
bit-equal (float32 on both sides) and steered generated ids equal. Skipped when the ndif package, redis-server or
root (for the namespace) is missing: ``bash scripts/ndif_setup.sh`` installs what is needed.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "ndif"))
from local_server import (
    LocalNDIF,
    ServerInfo,
    allow_local_model_key,
    missing_requirements,
    point_client_at,
)
from remote_cases import ARCHES, MAX_NEW, SELECTORS, captures, samples, steered, unsteered

_MISSING = missing_requirements()
pytestmark = [
    pytest.mark.ndif,
    pytest.mark.skipif(_MISSING is not None, reason=f"no local NDIF server: {_MISSING}"),
]

SERVER_TIMEOUT_S = 240


@dataclass
class Served:
    """The running server, its lifecycle timings, and the local models it serves (loaded by the client)."""

    server: LocalNDIF
    info: ServerInfo
    models: dict[str, Any]
    folders: dict[str, str]
    timings: dict[str, float]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Build the tiny models, start the server, deploy them; stop everything and check nothing is left."""
    from nnshift.models import load
    from nnshift.models.testing import build_tiny

    models: dict[str, Any] = {}
    folders: dict[str, str] = {}
    for arch in ARCHES:
        folder = build_tiny(arch, tmp_path_factory.mktemp(f"ndif-{arch}") / arch)
        folders[arch] = allow_local_model_key(folder)
        models[arch] = load(folders[arch], dtype="float32")

    # nnshift hidden on the server: a remote trace must not need it installed there
    server = LocalNDIF(dtype="float32", hide_modules=("nnshift",))
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        info = server.start()
        timings["start_s"] = time.monotonic() - t0
        timings["deploy_s"] = server.deploy(*((models[a].model.to_model_key(), folders[a]) for a in ARCHES))
        with point_client_at(info.host):
            yield Served(server, info, models, folders, timings)
    finally:
        netns = server.netns
        t0 = time.monotonic()
        stopped = server.stop()
        timings["stop_s"] = time.monotonic() - t0
        print(f"\nlocal NDIF: {timings} ({len(stopped)} processes stopped)")
        left = server.our_pids()
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert left == [], f"processes of the NDIF server still alive after stop: {left}"
        assert netns not in namespaces, f"network namespace {netns} not deleted"
        assert server.workdir is None


@pytest.fixture(scope="module")
def remote(served: Served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The remote results of every case, from one run of tests/ndif/remote_client.py against the server."""
    out = tmp_path_factory.mktemp("ndif-results") / "remote.pt"
    argv = [sys.executable, str(Path(__file__).parent / "ndif" / "remote_client.py"), "--host", served.info.host]
    argv += ["--out", str(out)] + [f"--model={arch}={folder}" for arch, folder in served.folders.items()]
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=SERVER_TIMEOUT_S, check=False)
    served.timings["remote_client_s"] = time.monotonic() - t0
    assert done.returncode == 0, f"remote client failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    results: dict[str, Any] = torch.load(out, weights_only=False)
    for arch, res in results.items():
        served.timings[f"{arch}_remote_calls_s"] = sum(res["seconds"].values())
    return results


def test_server_is_loopback_only(served: Served) -> None:
    """Every socket the server listens on is on loopback, in a namespace whose only interface is lo."""
    import psutil

    assert served.server.interfaces() == ["lo"]
    sockets = served.server.listening()
    assert any(port == served.info.api_port for _, port in sockets)
    for addr, port in sockets:
        ip = ipaddress.ip_address(addr)
        ip = getattr(ip, "ipv4_mapped", None) or ip
        assert ip.is_loopback or ip.is_unspecified, f"server listens on {addr}:{port}"
    # the bridge to it, on this side, listens on 127.0.0.1 only
    bridge = [c for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == served.info.api_port]
    assert bridge and all(c.laddr.ip == "127.0.0.1" for c in bridge)


def test_server_has_no_nnshift(served: Served) -> None:
    """Without registering nnshift, a block that uses an nnshift object fails on the server (it is not there)."""
    from nnsight.intervention.backends.remote import RemoteError

    vlm = served.models["llama"]
    inputs = vlm.prepare(samples(vlm))
    with pytest.raises(RemoteError, match="nnshift"), vlm.model.trace(dict(inputs), remote=True):
        vlm.get_resid(0).save()
    # the same block with only nnsight objects inside runs there, and equals the local run
    layer = vlm.layer(0)
    with vlm.model.trace(dict(inputs), remote=True):
        on_server = layer.output.save()
    with vlm.model.trace(dict(inputs)):
        local = layer.output.save()
    assert torch.equal(on_server, local)


@pytest.mark.parametrize("arch", ARCHES)
def test_capture_remote_equals_local(served: Served, remote: dict[str, Any], arch: str) -> None:
    """capture(remote=True) saves the same hidden states, rows and answers as the local capture, at each selector."""
    vlm = served.models[arch]
    local = captures(vlm, remote=False)
    got = remote[arch]["captures"]
    assert set(got) == set(local) == set(SELECTORS)
    for at in SELECTORS:
        assert set(got[at]) == set(local[at]) == {1, vlm.n_layers - 1}
        for layer, loc in local[at].items():
            r = got[at][layer]
            where = f"{arch}, at={at}, layer {layer}"
            assert loc["tensor"].shape[0] > 0 and loc["tensor"].shape[1] == vlm.hidden_size, where
            assert r["tensor"].dtype == loc["tensor"].dtype == torch.float32, where
            diff = (r["tensor"] - loc["tensor"]).abs().max() if r["tensor"].shape == loc["tensor"].shape else "shape"
            assert torch.equal(r["tensor"], loc["tensor"]), f"{where}: max |diff| {diff}"
            assert r["ids"] == loc["ids"] and r["answers"] == loc["answers"], where


@pytest.mark.parametrize("arch", ARCHES)
def test_steered_generation_remote_equals_local(served: Served, remote: dict[str, Any], arch: str) -> None:
    """A steering Patch applied at every generation step on NDIF gives the local steered ids and states."""
    vlm = served.models[arch]
    local = steered(vlm, remote=False)
    got = remote[arch]["steered"]
    assert got["tokens"] == local["tokens"]
    assert len(got["states"]) == len(local["states"]) == MAX_NEW
    assert all(torch.equal(r, loc) for r, loc in zip(got["states"], local["states"], strict=True))
    # the patch did something: the steered states differ from the unsteered run from the first step on
    plain = unsteered(vlm)
    assert not torch.equal(local["states"][0], plain["states"][0])
