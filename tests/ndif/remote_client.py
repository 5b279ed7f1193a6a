"""Run the cases of remote_cases.py with ``remote=True`` against an NDIF server and save what came back.

    python tests/ndif/remote_client.py --host http://127.0.0.1:PORT --out results.pt \
        --model llama=/path/to/llama [--model llava=/path/to/llava]

Used by tests/test_remote.py. It runs in its own plain Python process because nnshift's code travels to the
server by value (``nnsight.register(nnshift)``, the server has no nnshift), and the jaxtyping/beartype
instrumentation that pytest applies to nnshift makes its functions unpicklable (closures hold weakrefs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    """Load each model, run the remote cases, save ``{arch: {"captures", "steered", "seconds"}}`` with torch.save."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", action="append", required=True, help="ARCH=FOLDER")
    args = parser.parse_args(argv)

    import nnsight
    import torch
    from local_server import allow_local_model_key, point_client_at
    from remote_cases import captures, steered

    import nnshift
    from nnshift.models import load

    # what a user does before remote=True: nnshift is not installed on NDIF, its code ships with each request
    nnsight.register(nnshift)
    results = {}
    with point_client_at(args.host):
        for item in args.model:
            arch, folder = item.split("=", 1)
            vlm = load(allow_local_model_key(folder), dtype="float32")
            t0 = time.monotonic()
            caps = captures(vlm, remote=True)
            t1 = time.monotonic()
            steer = steered(vlm, remote=True)
            t2 = time.monotonic()
            results[arch] = {"captures": caps, "steered": steer, "seconds": {"captures": t1 - t0, "steered": t2 - t1}}
    torch.save(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
