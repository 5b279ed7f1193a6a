"""nnsight's remote="local" dry run against the local run, for tiny models given as folders (run as a script).

For each folder: a capture at the last prompt position (layers 1 and -1) and a greedy generation steered by a
`Patch` at every step, once locally and once with ``remote="local"`` (the request serialised and executed as for
NDIF). Prints one JSON line per model: whether the tensors and ids are bit-equal and whether the patch acted.
Run outside pytest: the dry run re-imports nnshift, which pytest's jaxtyping import hook does not survive.
"""

from __future__ import annotations

import json
import sys

import torch


def check(folder: str) -> dict[str, object]:
    """The remote-local comparisons for the tiny model in `folder`."""
    import nnshift as ns
    from nnshift.capture import capture
    from nnshift.models.testing import tiny_image
    from nnshift.steering import SteeringVector

    vlm = ns.load(folder, dtype="float32")
    image = vlm.is_multimodal
    samples = [
        ns.Sample(id="a", prompt="what color is the dog ?", image=tiny_image(0) if image else None),
        ns.Sample(id="b", prompt="how many cats", image=tiny_image(1) if image else None),
    ]
    caps = {
        remote: capture(vlm, samples, layer=[1, -1], at="last_prompt", progress=False, remote=remote)
        for remote in (False, "local")
    }
    same_capture = all(torch.equal(caps[False][k].tensor, caps["local"][k].tensor) for k in caps[False])
    inputs = vlm.prepare(samples)
    vec = torch.randn(vlm.hidden_size, generator=torch.Generator().manual_seed(0))
    patch = SteeringVector(vec, layer=1).patch(4.0, "all")
    kw = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False, "pad_token_id": vlm.pad_token_id}
    ids = {}
    for remote in (False, "local"):
        extra = {"remote": remote} if remote else {}
        with vlm.model.generate(dict(inputs), **kw, **extra) as tracer:
            patch(vlm, inputs=inputs)
            out = tracer.result.save()
        ids[remote] = out
    plain = vlm.hf.generate(**inputs, **kw)
    with vlm.model.trace(dict(inputs)):
        patch(vlm, inputs=inputs)
        steered_logits = vlm.model.output.logits.save()
    with torch.no_grad():
        plain_logits = vlm.hf(**inputs).logits
    return {
        "folder": folder,
        "same_capture": same_capture,
        "same_steered_ids": bool(torch.equal(ids[False], ids["local"])),
        "patch_acted": not torch.equal(steered_logits, plain_logits),
        "ids_changed": not torch.equal(ids[False], plain),
    }


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(json.dumps(check(path)), flush=True)
