"""Feasibility of prompt-prefix sharing per model family (prints one line per family).

For each family: the samples replicated 3 times, generated in full (`run_generation`), vs the prompt minus its
last token prefilled once per sample (``hf.generate(max_new_tokens=1)``), its KV cache repeated 3 times along
the batch, and the generation continued on the full ids/mask without image inputs. SAME = identical token ids;
the max |difference| of the last-layer state at each step is printed. Usage:
``python scripts/prefix_feasibility.py shapes llava qwen2_vl ...`` (tiny models of nnshift.models.testing).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch

import nnshift as ns
from nnshift.generation import run_generation

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


def prefix_cache(vlm: Any, inputs: dict[str, torch.Tensor], g: int) -> Any:
    """The KV cache of the prompt minus its last token, each row repeated ``g`` times."""
    pre = {k: (v[:, :-1] if k in ("input_ids", "attention_mask") else v) for k, v in inputs.items()}
    with torch.no_grad():
        out = vlm.hf.generate(
            **pre, max_new_tokens=1, do_sample=False, return_dict_in_generate=True, pad_token_id=vlm.pad_token_id
        )
    cache = out.past_key_values
    cache.batch_repeat_interleave(g)
    return cache


def check(vlm: Any, samples: list[ns.Sample], g: int = 3, steps: int = 4, layer: int = -1) -> tuple[Any, ...]:
    """Plain run of the replicated rows vs the shared-prefix continuation: (same tokens, max |dh| per step, ...)."""
    rows = [s for s in samples for _ in range(g)]
    plain = run_generation(vlm, vlm.prepare(rows), steps, layers=[layer])
    inputs = vlm.prepare(samples)
    cont = {
        "input_ids": inputs["input_ids"].repeat_interleave(g, 0),
        "attention_mask": inputs["attention_mask"].repeat_interleave(g, 0),
        "past_key_values": prefix_cache(vlm, inputs, g),
    }
    shared = run_generation(vlm, cont, steps, layers=[layer])
    layer = vlm.layer_index(layer)
    diffs = [float((a - b).abs().max()) for a, b in zip(plain.states[layer], shared.states[layer], strict=True)]
    return plain.tokens == shared.tokens, diffs, plain.tokens[::g], shared.tokens[::g]


def _load(arch: str) -> tuple[Any, list[ns.Sample]]:
    if arch == "shapes":
        return ns.zoo.load("shapes-base"), ns.zoo.dataset(6, task="vqa", seed=305)
    from nnshift.models.testing import TEXT_ARCHES, cached_tiny, tiny_image

    opts = {"layers": 2} if arch in TEXT_ARCHES else {"vision_layers": 1, "text_layers": 2}
    vlm = ns.load(cached_tiny(arch, **opts), dtype="float32")
    img = vlm.is_multimodal
    prompts = ["what color is the dog ?", "how many", "is there a red cat on the mat near the dog"]
    return vlm, [ns.Sample(id=f"s{i}", prompt=p, image=tiny_image(i) if img else None) for i, p in enumerate(prompts)]


def main() -> None:
    """One line per family named on the command line."""
    for arch in sys.argv[1:] or ["shapes"]:
        try:
            same, diffs, a, b = check(*_load(arch))
            tail = "" if same else f"plain {a} shared {b}"
            print(arch, "SAME" if same else "DIFF", "max|dh| per step", [f"{d:.1e}" for d in diffs], tail, flush=True)
        except Exception as exc:
            print(arch, "ERROR", type(exc).__name__, str(exc)[:300], flush=True)


if __name__ == "__main__":
    main()
