"""Capture throughput: ns.capture (batch 16) vs a reference-style loop vs bare HF generate.

The reference-style loop is what the paper's code does: batch 1, ``generate`` with a forward hook that
copies every position to CPU at every step, then selects the TOI state. Bare ``generate`` (batch 16, no
hook, no selection) is the floor: nnshift's overhead is measured against it.

    python benchmarks/capture.py                      # shapes-base if the zoo is installed, TOI "circle"
    python benchmarks/capture.py --model random --n 64

Prints a Markdown table (samples/s, time relative to bare generate, speed-up over the reference loop).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import warnings

import torch
from steering import timed_all  # the shared round-robin timer (benchmarks/ is on sys.path when run as a script)

import nnshift as ns
from nnshift import positions as P
from nnshift.positions import find_word_token

warnings.filterwarnings("ignore")


def _model_and_data(name: str, n: int) -> tuple[ns.VLM, list[ns.Sample], str]:
    if name == "random":
        from nnshift.models.testing import build_tiny, tiny_image

        folder = build_tiny("llava", tempfile.mkdtemp(), text_layers=8, vision_layers=2)
        vlm = ns.load(folder)
        samples = [ns.Sample(id=str(i), prompt="what color is the circle", image=tiny_image(i)) for i in range(n)]
        word = ns.generate(vlm, samples[:1], max_new_tokens=4, progress=False)[0].split()[0]
        return vlm, samples, word
    from nnshift import zoo

    vlm = zoo.load(name)
    samples = zoo.dataset(n, style="generic", task="caption", seed=123)
    return vlm, samples, "circle"


def reference_loop(vlm: ns.VLM, samples: list[ns.Sample], layer: int, word: str, max_new_tokens: int) -> int:
    """Batch 1; a hook copies the whole block output to CPU at every forward call; select afterwards."""
    sel = P.token_of_interest(word)
    kept = 0
    for s in samples:
        seen: list[torch.Tensor] = []
        handle = vlm.layer_module(layer).register_forward_hook(
            lambda _m, _i, o, seen=seen: seen.append((o[0] if isinstance(o, tuple) else o).detach().cpu())
        )
        inputs = vlm.prepare([s])
        with torch.no_grad():
            out = vlm.hf.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=vlm.eos_token_ids,
                pad_token_id=vlm.pad_token_id,
            )
        handle.remove()
        states = torch.cat(seen, dim=1)[0]
        plen = inputs["input_ids"].shape[1]
        answer = out[0, plen:].tolist()
        k = find_word_token(vlm.tokenizer, answer, sel)
        if k is not None and plen - 1 + k < states.shape[0]:
            _ = states[plen - 1 + k].clone()
            kept += 1
    return kept


def bare_generate(vlm: ns.VLM, samples: list[ns.Sample], batch_size: int, max_new_tokens: int) -> None:
    """Plain HF generate, batched, nothing captured."""
    for start in range(0, len(samples), batch_size):
        inputs = vlm.prepare(samples[start : start + batch_size])
        with torch.no_grad():
            vlm.hf.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=vlm.eos_token_ids,
                pad_token_id=vlm.pad_token_id,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-base", help="a zoo name, or 'random' (a random LLaVA, 8 LM layers)")
    ap.add_argument("--n", type=int, default=64, help="number of samples")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable timings on a shared CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vlm, samples, word = _model_and_data(args.model, args.n)
    layer = -1
    sel = P.token_of_interest(word)
    bare_name = f"bare HF generate (batch {args.batch_size})"
    ours_name = f"ns.capture (batch {args.batch_size})"
    ref_name = "reference-style loop (batch 1, hook copies all)"
    res = timed_all(
        {
            bare_name: lambda: bare_generate(vlm, samples, args.batch_size, args.max_new_tokens),
            ours_name: lambda: ns.capture(
                vlm, samples, layer, sel, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=False
            ),
            ref_name: lambda: reference_loop(vlm, samples, layer, word, args.max_new_tokens),
        },
        args.repeats,
    )
    acts = ns.capture(
        vlm, samples, layer, sel, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=False
    )
    bare, ref = res[bare_name], res[ref_name]
    print(f"model: {vlm!r}; {args.n} samples; TOI {word!r} kept {len(acts)}; max_new_tokens {args.max_new_tokens}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}")
    print()
    print("| method | wall (s) | CPU (s) | samples/s (wall) | CPU / bare generate | speed-up vs reference loop (CPU) |")
    print("|---|---|---|---|---|---|")
    for name, (w, c) in res.items():
        print(f"| {name} | {w:.2f} | {c:.2f} | {args.n / w:.1f} | {c / bare[1]:.2f}x | {ref[1] / c:.1f}x |")


if __name__ == "__main__":
    main()
