"""Patch operators and concept gates on a real local NDIF server (marked ``ndif``: not in the default run).

One plain Python process (jaxtyping's pytest instrumentation makes nnshift's functions unpicklable) starts the
loopback NDIF stack of tests/ndif/local_server.py with nnshift hidden on the server, deploys a tiny Llama, and
runs a patch set with every operator and a gated patch three ways, remote and local: ``ns.steer``, the user's own
``trace`` and the user's own ``generate`` (decode steps on the side worker). All must be equal.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "ndif"))
from local_server import missing_requirements

_MISSING = missing_requirements()
pytestmark = [
    pytest.mark.ndif,
    pytest.mark.skipif(_MISSING is not None, reason=f"no local NDIF server: {_MISSING}"),
]

ROOT = Path(__file__).resolve().parents[1]

_CLIENT = """
import sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1] + "/tests/ndif")
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import torch, nnsight
import nnshift
import nnshift as ns
from local_server import LocalNDIF, allow_local_model_key, point_client_at
from nnshift.models.testing import build_tiny
from nnshift.steering import ConceptGate, SteeringVector

folder = allow_local_model_key(build_tiny("llama", Path(sys.argv[2]) / "llama"))
vlm = ns.load(folder, dtype="float32")
samples = [ns.Sample(id=str(i), prompt=p) for i, p in enumerate(["what color is the dog", "how many", "is there a cat"])]
inputs = vlm.prepare(samples)
g = torch.Generator().manual_seed(0)
vec = lambda layer: SteeringVector(torch.randn(vlm.hidden_size, generator=g), layer=layer)
gate = ConceptGate(torch.randn(3, vlm.hidden_size, generator=g), 1)
patch = (
    vec(1).patch(1.0, op="project_out")
    + vec(1).patch(torch.tensor([0.5, 1.0, 0.0]), "generated", op="clamp", value=0.3)
    + vec(2).patch(0.4, op="norm")
    + vec(2).patch(3.0, gate=gate)
)
kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=vlm.pad_token_id)


def run(remote):
    extra = {"remote": True} if remote else {}
    answers = ns.steer(vlm, samples, patch, 5, progress=False, **extra)
    with vlm.model.trace(dict(inputs), **extra):
        patch(vlm, inputs=inputs)
        logits = vlm.model.output.logits.save()
    with vlm.model.generate(dict(inputs), **kw, **extra) as tracer:
        patch(vlm, inputs=inputs)
        ids = tracer.result.save()
    return answers, logits, ids


local = run(False)
with vlm.model.generate(dict(inputs), **kw) as tracer:
    bare = tracer.result.save()
assert not torch.equal(local[2], bare), "the patch did nothing"
server = LocalNDIF(dtype="float32", hide_modules=("nnshift",))
try:
    info = server.start()
    server.deploy((vlm.model.to_model_key(), folder))
    with point_client_at(info.host):
        nnsight.register(nnshift)
        remote = run(True)
finally:
    server.stop()
assert remote[0] == local[0], "ns.steer differs"
assert torch.equal(remote[1], local[1]), "own trace differs"
assert torch.equal(remote[2], local[2]), "own generate differs"
print("NDIF-OPS-OK")
"""


def test_operators_and_gates_on_ndif_equal_local(tmp_path: Path) -> None:
    """ns.steer, an own trace and an own generate with every op and a gate: remote results equal local ones."""
    res = subprocess.run(
        [sys.executable, "-c", _CLIENT, str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
        cwd=ROOT,
    )
    assert "NDIF-OPS-OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
