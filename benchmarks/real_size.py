"""Real-size readiness: capture and steering on LLaVA-1.5-7B- and Qwen2-VL-7B-shaped random models vs bare generate.

The models have the real hidden sizes, MLP widths, head counts, vision towers and vocabularies of
llava-hf/llava-1.5-7b-hf and Qwen/Qwen2-VL-7B-Instruct (random weights, bfloat16), with ``--layers`` decoder and
vision layers (default: 2 on CPU, all of them on a GPU). Each is saved with ``save_pretrained`` and loaded with
``ns.load`` like a downloaded checkpoint. Same batch and greedy settings for the three methods; they run
round-robin (best of ``--repeats`` after a warm-up) and the peak memory of each is recorded (CUDA: peak allocated;
CPU: peak resident set size, sampled every 5 ms; both also as the rise above the level before the call).

    python benchmarks/real_size.py --layers 2 --n 2 --max-new-tokens 4 --repeats 1      # CPU, a few minutes
    python benchmarks/real_size.py                                                       # a GPU: all layers

Writes benchmarks/results/real_size_<arch>_L<layers>_<device>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import nnshift as ns
from nnshift import positions as P
from nnshift.models.testing import build_tiny, tiny_image
from nnshift.steering import Patch

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"

# (text config, vision config, image side in pixels) of the two 7B checkpoints
LLAVA_TEXT = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
LLAVA_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
QWEN_TEXT = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 3584,
    "num_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


def _sized(tiny: Path, text: dict[str, Any], vision: dict[str, Any], layers: int | None, depth_key: str) -> Any:
    """The tiny model's config with the real text and vision sizes (``layers`` of each, or all)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny)
    text = dict(text)
    vision = dict(vision)
    if layers is not None:
        text["num_hidden_layers"] = layers
        vision[depth_key] = layers
    for key, value in text.items():
        setattr(config.text_config, key, value)
    for key, value in vision.items():
        setattr(config.vision_config, key, value)
    if hasattr(config.text_config, "layer_types"):
        config.text_config.layer_types = ["full_attention"] * config.text_config.num_hidden_layers
    return config


def build(arch: str, folder: Path, layers: int | None) -> Path:
    """Save a random real-size `arch` model (bfloat16) with a tiny tokenizer and a real-size image processor."""
    from transformers import AutoModelForImageTextToText

    from nnshift.models.processors import load_processor

    tiny = build_tiny({"llava": "llava", "qwen2-vl": "qwen2_vl"}[arch], folder / "tiny")
    processor = load_processor(tiny)  # AutoProcessor, or its image-only fallback without torchvision
    if arch == "llava":
        from transformers import CLIPImageProcessorPil

        config = _sized(tiny, LLAVA_TEXT, LLAVA_VISION, layers, "num_hidden_layers")
        processor.image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
        )
        processor.patch_size = 14  # 24 x 24 = 576 image tokens, as LLaVA-1.5
    else:
        from transformers import Qwen2VLImageProcessorPil

        config = _sized(tiny, QWEN_TEXT, QWEN_VISION, layers, "depth")
        config.vision_config.out_hidden_size = config.text_config.hidden_size
        side = 336 * 336  # 24 x 24 patches -> 144 merged image tokens
        processor.image_processor = Qwen2VLImageProcessorPil(
            min_pixels=side, max_pixels=side, patch_size=14, merge_size=2, temporal_patch_size=2
        )
    torch.manual_seed(0)
    config.dtype = torch.bfloat16
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.generation_config.do_sample = False
    out = folder / arch
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


class PeakMemory:
    """Peak memory of a block: CUDA peak allocated, or CPU resident set size sampled every 5 ms (above the start)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def extra_mib(self) -> float:
        """Peak above the level at the start, in MiB."""
        return (self.peak - self.start) / 2**20


def measure(fns: dict[str, Callable[[], object]], repeats: int, cuda: bool) -> dict[str, dict[str, float]]:
    """Best wall / CPU time and the largest peak memory of each function, run round-robin after one warm-up."""
    for fn in fns.values():
        fn()
    best = {name: {"wall_s": float("inf"), "cpu_s": float("inf"), "peak_extra_mib": 0.0} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with PeakMemory(cuda) as mem:
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                if cuda:
                    torch.cuda.synchronize()
                w, c = time.perf_counter() - w0, time.process_time() - c0
            row = best[name]
            row["wall_s"], row["cpu_s"] = min(row["wall_s"], w), min(row["cpu_s"], c)
            row["peak_extra_mib"] = max(row["peak_extra_mib"], mem.extra_mib)
            row["peak_mib"] = max(row.get("peak_mib", 0.0), mem.peak / 2**20)
    return best


def run(arch: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Build, load and measure one architecture; the JSON record."""
    with tempfile.TemporaryDirectory(prefix="nnshift-real-size-") as tmp:
        t0 = time.perf_counter()
        folder = build(arch, Path(tmp), args.layers)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        vlm = ns.load(folder, dtype="bfloat16", device=device)
        load_s = time.perf_counter() - t0
    samples = [ns.Sample(id=str(i), prompt="describe the image briefly", image=tiny_image(i)) for i in range(args.n)]
    gen = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "progress": False}
    torch.manual_seed(0)
    vector = torch.randn(vlm.hidden_size)
    patch = Patch(vector / vector.norm() * 4.0, alpha=1.0, layer=-1)

    def bare() -> None:
        for start in range(0, len(samples), args.batch_size):
            inputs = vlm.prepare(samples[start : start + args.batch_size])
            with torch.no_grad():
                vlm.hf.generate(
                    **inputs,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    eos_token_id=vlm.eos_token_ids,
                    pad_token_id=vlm.pad_token_id,
                )

    fns = {
        "bare HF generate": bare,
        "ns.capture (last layer, mean of generated)": lambda: ns.capture(
            vlm, samples, -1, P.generated(reduce="mean"), **gen
        ),
        "ns.steer (last layer, all positions)": lambda: ns.steer(vlm, samples, patch, **gen),
    }
    res = measure(fns, args.repeats, device.startswith("cuda"))
    bare_row = res["bare HF generate"]
    for row in res.values():
        row["wall_vs_bare"] = row["wall_s"] / bare_row["wall_s"]
        row["cpu_vs_bare"] = row["cpu_s"] / bare_row["cpu_s"]
    n_params = sum(p.numel() for p in vlm.hf.parameters())
    prompt_len = int(vlm.prepare(samples[:1])["input_ids"].shape[1])
    return {
        "arch": arch,
        "model": type(vlm.hf).__name__,
        "decoder_layers": vlm.n_layers,
        "hidden_size": vlm.hidden_size,
        "vocab_size": vlm.vocab_size,
        "parameters": n_params,
        "dtype": str(vlm.dtype),
        "prompt_tokens": prompt_len,
        "n": args.n,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "build_s": build_s,
        "load_s": load_s,
        "methods": res,
    }


def main() -> None:
    """Parse arguments, run each architecture, write JSON and print Markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["llava", "qwen2-vl", "both"], default="both")
    ap.add_argument(
        "--layers", type=int, default=None, help="decoder and vision layers (default: 2 on CPU, all on GPU)"
    )
    ap.add_argument("--n", type=int, default=4, help="number of samples (each with a random image)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.layers is None and not args.device.startswith("cuda"):
        args.layers = 2
    env = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for arch in ["llava", "qwen2-vl"] if args.arch == "both" else [args.arch]:
        record = run(arch, args, args.device)
        layers = "all" if args.layers is None else args.layers
        path = args.out / f"real_size_{arch}_L{layers}_{args.device.split(':')[0]}.json"
        path.write_text(json.dumps({"env": env, **record}, indent=1) + "\n")
        print(
            f"\n{record['model']}: {record['decoder_layers']} decoder layers, hidden {record['hidden_size']}, vocab"
            f" {record['vocab_size']}, {record['parameters'] / 1e6:.0f}M parameters, {record['dtype']},"
            f" {record['prompt_tokens']} prompt tokens; n {args.n}, batch {args.batch_size}, {args.max_new_tokens}"
            f" new tokens; build {record['build_s']:.0f} s, ns.load {record['load_s']:.1f} s -> {path}"
        )
        mem = "peak allocated" if args.device.startswith("cuda") else "peak RSS"
        print(f"| method | wall (s) | CPU (s) | wall / bare | CPU / bare | {mem} (MiB) | above start (MiB) |")
        print("|---|---|---|---|---|---|---|")
        for name, row in record["methods"].items():
            print(
                f"| {name} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['wall_vs_bare']:.2f}x |"
                f" {row['cpu_vs_bare']:.2f}x | {row['peak_mib']:.0f} | {row['peak_extra_mib']:.0f} |"
            )


if __name__ == "__main__":
    main()
