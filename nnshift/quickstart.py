"""A one-minute check that the install works: load a model, capture, print a summary.

python -m nnshift.quickstart            # the shapes-base zoo model if installed, else a tiny random LLaVA
"""

from __future__ import annotations

import tempfile
import time
import warnings

import nnshift as ns


def main() -> None:
    """Load a model, capture the token-of-interest states of a few samples and print what was captured."""
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    try:
        from nnshift import zoo

        vlm = zoo.load("shapes-base")
        samples = zoo.dataset(32, style="generic", task="caption", seed=7)
        at: ns.positions.Selector = ns.positions.token_of_interest("circle")
    except (ImportError, AttributeError, ns.NnshiftError):
        from nnshift.models.testing import build_tiny, tiny_image

        vlm = ns.load(build_tiny("llava", tempfile.mkdtemp(prefix="nnshift-")))
        samples = [ns.Sample(id=str(i), prompt="what color is the circle", image=tiny_image(i)) for i in range(16)]
        at = ns.positions.last_prompt()
    print(vlm)
    acts = ns.capture(vlm, samples, layer=-1, at=at, max_new_tokens=24)
    assert isinstance(acts, ns.Activations)  # one layer asked, one Activations back
    print(acts)
    print(f"kept {len(acts)} of {len(samples)} samples at {at}; hidden size {acts.dim}")
    for i, a in list(zip(acts.ids, acts.answers, strict=True))[:3]:
        print(f"  {i}: {a!r}")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
