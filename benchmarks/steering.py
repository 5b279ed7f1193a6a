"""Steering overhead: steered nnsight generate vs unsteered nnsight generate vs bare HF generate.

Same batch (16 prompts of different lengths, left padded), same number of new tokens (``min_new_tokens`` =
``max_new_tokens``, so every method runs every step), greedy. The model is a random Llama built from a config
(hidden 512, 8 layers, a 512-token BPE vocabulary), loaded through ``ns.load`` like any local folder. The patch
adds ``alpha * s`` at every position ("all") of one layer at every step; a second row steers two layers.

    python benchmarks/steering.py                 # best of 5 repeats, 1 torch thread
    python benchmarks/steering.py --repeats 9 --max-new-tokens 32 --threads 2
    python benchmarks/steering.py shapes --json steering_shapes.json   # the shapes-world results (needs the zoo)

Prints a Markdown table: best wall time, tokens/s, and time relative to unsteered nnsight and to bare generate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

import nnshift as ns
from nnshift.generation import generate, run_generation
from nnshift.models.testing import WORDS, tiny_tokenizer
from nnshift.steering import SteeringVector, steer

warnings.filterwarnings("ignore")


def build_model(folder: Path, hidden: int = 512, layers: int = 8) -> Path:
    """A random LlamaForCausalLM (hidden ``hidden``, ``layers`` layers, tiny vocabulary) saved to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = tiny_tokenizer("llama")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prompts(n: int, seed: int = 0) -> list[ns.Sample]:
    """``n`` random word prompts of 8 to 40 words (different lengths, so the batch is left padded)."""
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    return [ns.Sample(id=str(i), prompt=" ".join(rng.choices(words, k=rng.randint(8, 40)))) for i in range(n)]


def timed_all(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) time of each function over ``repeats`` rounds, after one warm-up round.

    The functions run round-robin, so a burst of load from other processes hits every method alike; the
    process CPU time (one torch thread) is what the machine's load disturbs least.
    """
    for fn in fns.values():
        fn()
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - w0, time.process_time() - c0
            best[name] = (min(best[name][0], w), min(best[name][1], c))
    return best


def overhead(argv: list[str]) -> None:
    """The overhead benchmark (default command)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine, 2 OpenMP threads make each small decode-step "
        "matmul wait for the other core and the timings erratic)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = build_model(Path(tempfile.mkdtemp(prefix="nnshift-bench-steer-")) / "llama", args.hidden, args.layers)
    vlm = ns.load(folder, dtype="float32")
    samples = prompts(args.batch_size)
    inputs = vlm.prepare(samples)
    n_new = args.max_new_tokens
    kw = {
        "max_new_tokens": n_new,
        "min_new_tokens": n_new,
        "do_sample": False,
        "pad_token_id": vlm.pad_token_id,
        "eos_token_id": vlm.eos_token_ids,
    }
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector(torch.randn(vlm.hidden_size, generator=g), layer=vlm.n_layers // 2)
    vec2 = SteeringVector(torch.randn(vlm.hidden_size, generator=g), layer=-1)

    def bare() -> torch.Tensor:
        with torch.no_grad():
            return vlm.hf.generate(**inputs, **kw)

    def nn_plain() -> torch.Tensor:
        with vlm.model.generate(dict(inputs), **kw) as tracer:
            out = tracer.result.save()
        return out

    def nn_steered(two: bool = False):
        def run() -> torch.Tensor:
            patch = vec.patch(1.0, "all") + vec2.patch(0.5, "all") if two else vec.patch(1.0, "all")
            with vlm.model.generate(dict(inputs), **kw) as tracer:
                patch(vlm, inputs=inputs)  # binds (masks, deltas) then edits every step
                out = tracer.result.save()
            return out

        return run

    # sanity: the nnsight run is the HF run, and the patch changes the answer
    assert torch.equal(bare(), nn_plain()), "unsteered nnsight generate differs from HF generate"
    assert not torch.equal(nn_plain(), nn_steered()()), "the patch changed nothing"
    samples_kw = {"max_new_tokens": n_new, "batch_size": args.batch_size, "progress": False}
    res = timed_all(
        {
            "bare HF generate": bare,
            "nnsight generate, unsteered": nn_plain,
            "nnsight generate + patch (1 layer, all positions)": nn_steered(),
            "nnsight generate + patch set (2 layers)": nn_steered(True),
            "ns.generate (run_generation, unsteered)": lambda: generate(vlm, samples, **samples_kw),
            "ns.steer (run_generation + patch)": lambda: steer(vlm, samples, vec.patch(1.0), **samples_kw),
        },
        args.repeats,
    )
    _ = run_generation  # the ns.* paths are built on it
    total = args.batch_size * n_new
    print(
        f"model: random Llama, hidden {vlm.hidden_size}, {vlm.n_layers} layers, vocab {vlm.vocab_size}, float32; "
        f"batch {args.batch_size}, prompt {inputs['input_ids'].shape[1]} tokens (left padded), {n_new} new tokens; "
        f"best of {args.repeats} (round-robin)"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print()
    print("| method | best wall (s) | best CPU (s) | new tokens/s (CPU) | CPU vs unsteered nnsight | CPU vs bare HF |")
    print("|---|---|---|---|---|---|")
    bare_c = res["bare HF generate"][1]
    for name, (w, c) in res.items():
        ref = res[
            "ns.generate (run_generation, unsteered)" if name.startswith("ns.") else "nnsight generate, unsteered"
        ]
        print(f"| {name} | {w:.3f} | {c:.3f} | {total / c:.0f} | {c / ref[1]:.3f}x | {c / bare_c:.3f}x |")
    print()
    print("(ns.* rows are compared with ns.generate, which also reads the argmax at each step)")


# ---------------------------------------------------------------------------- shapes-world results


def _part(results: dict, name: str, fn: Callable[[], dict]) -> None:
    """Run one experiment; an experiment that cannot run (e.g. an answer never produced) is recorded as skipped."""
    from nnshift.errors import NnshiftError

    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except NnshiftError as exc:
        results[name] = {"skipped": str(exc)}
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[{name}] {json.dumps(results[name], default=str)[:2000]}", flush=True)


def shapes(argv: list[str]) -> None:
    """Steering results on the shapes world (the numbers of docs/steering.md)."""
    from nnshift import positions as P
    from nnshift import zoo
    from nnshift.concepts import fit
    from nnshift.evaluate import answer_type, compare_captions, compare_vqa
    from nnshift.steering import answer_type_vector, by_impact, coarse, fine_all, target_answer
    from nnshift.zoo.world import caption

    ap = argparse.ArgumentParser(description="steering on the shapes world (needs the zoo, or --random)")
    ap.add_argument("--model", default="shapes-base")
    ap.add_argument("--random", action="store_true", help="a random tiny LLaVA instead (smoke test: numbers are noise)")
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--layer", type=int, default=None, help="layer steered for VQA (default: the last)")
    ap.add_argument("--k", type=int, default=8, help="concepts for the colour -> colour fine-grained vectors")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.random:
        from nnshift.models.testing import build_tiny

        vlm = ns.load(build_tiny("llava", Path(tempfile.mkdtemp()) / "llava"), dtype="float32")
    else:
        vlm = zoo.load(args.model, dtype="float32")
    last = vlm.n_layers - 1 if args.layer is None else vlm.layer_index(args.layer)
    mid = max(0, round(0.6 * vlm.n_layers) - 1)  # the paper steers captions at layer 20 of 32
    nt, ne, alpha = args.n_train, args.n_eval, args.alpha
    train = {t: zoo.dataset(nt, task="vqa", answer_type=t, seed=11) for t in ("yes/no", "number", "other")}
    evalset = zoo.dataset(ne, task="vqa", seed=12)
    q = {"max_new_tokens": 4, "progress": False}
    base = generate(vlm, evalset, **q)
    results: dict = {"model": args.model if not args.random else "random tiny LLaVA", "layer_vqa": last}
    results["n_train_per_type"], results["n_eval"], results["alpha"] = nt, ne, alpha

    def sub_rate(answers: list[str], gt: str, pred: str) -> float:
        idx = [i for i, s in enumerate(evalset) if s.meta["answer_type"] == gt]
        return sum(answer_type(answers[i]) == pred for i in idx) / max(1, len(idx))

    def coarse_type() -> dict:
        acts = ns.capture(vlm, train["yes/no"] + train["number"], last, "last_prompt", progress=False)
        vec = answer_type_vector(acts, "yes/no", "number", by="reference")
        after = steer(vlm, evalset, vec.patch(alpha), **q)
        rep = compare_vqa(base, after, evalset, touched=["yes/no", "number"])
        return {
            "number_share_on_yesno_questions": [
                sub_rate(base, "yes/no", "number"),
                sub_rate(after, "yes/no", "number"),
            ],
            "number_share_all": list(rep.type_rates.get("number", (0.0, 0.0))),
            "accuracy_by_type": {"before": rep.before.accuracy_by_type, "after": rep.after.accuracy_by_type},
            "changed": rep.changed,
            "vector_norm": vec.norm,
        }

    def yes_to_no() -> dict:
        acts = ns.capture(vlm, train["yes/no"], last, "last_prompt", progress=False)
        acts.answers = generate(vlm, train["yes/no"], **q)
        vec = target_answer(acts, "yes", "no")
        after = steer(vlm, evalset, vec.patch(alpha), **q)
        rep = compare_vqa(base, after, evalset, source="yes", target="no")
        return {
            "yes_to_target": [rep.turned, rep.source_counts[0]],
            "yes_count": list(rep.source_counts),
            "no_count": list(rep.target_counts),
            "untouched_accuracy": rep.untouched_accuracy,
            "changed": rep.changed,
            "n_source_rows": vec.info["source"]["n"],
            "n_target_rows": vec.info["target"]["n"],
        }

    def colour_by_impact() -> dict:
        colour_train = zoo.dataset(nt, task="vqa", question_kind="color_of_shape", seed=13)
        colour_eval = zoo.dataset(max(50, ne // 3), task="vqa", question_kind="color_of_shape", seed=14)
        acts = ns.capture(vlm, colour_train, last, "last_prompt", progress=False)
        dico = fit(acts, k=min(args.k, len(acts)), method="kmeans", seed=0)
        before = generate(vlm, colour_eval, **q)
        ranked = by_impact(
            vlm, colour_eval, fine_all(dico), alpha=alpha, baseline=before, max_new_tokens=4, progress=False
        )
        # each concept's colour, for checking only (the selection never sees it): the most common true answer
        # among the training questions assigned to the concept
        assigned = dico.assign(acts).tolist()
        concept_colour = {}
        for j in range(dico.k):
            answers = [s.answers[0] for s, a in zip(acts.samples, assigned, strict=True) if a == j]
            concept_colour[j] = Counter(answers).most_common(1)[0][0] if answers else None
        top = []
        for r in ranked[:5]:
            top.append(
                {
                    "pair": list(r.key),
                    "targets": r.targets,
                    "score": r.score,
                    "changes": dict(list(r.changes.items())[:5]),
                    "colour_of_concept_j": concept_colour[r.key[1]],
                }
            )
        return {
            "concept_colours": concept_colour,
            "candidates": dico.k * (dico.k - 1),
            "top": top,
            "before_counts": dict(list(Counter(before).most_common(6))),
        }

    def caption_style() -> dict:
        caps = zoo.dataset(nt, style="generic", task="caption", seed=15)
        cap_eval = zoo.dataset(max(50, ne // 3), style="generic", task="caption", seed=16)
        c = {"max_new_tokens": 24, "progress": False}
        source = ns.capture(vlm, caps, mid, P.generated(reduce="mean"), max_new_tokens=24, progress=False)
        # target: where the colour fine-tune says a colour word (greedy shapes-base rarely names one)
        ft = zoo.load("shapes-colors", dtype="float32") if not args.random else vlm
        target = ns.capture(ft, caps, mid, P.token_of_interest(list(zoo.COLORS)), max_new_tokens=24, progress=False)
        vec = coarse(source, target, layer=mid)
        before = generate(vlm, cap_eval, **c)
        after = steer(vlm, cap_eval, vec.patch(alpha), **c)
        styles = {"colors": zoo.COLORS, "places": zoo.BACKGROUNDS}
        # caption quality: CIDEr-D against the image's generic caption (the base model's own style, as COCO's
        # references are for the paper) and against its colours-style caption (are the named colours right?)
        generic = compare_captions(before, after, styles, references=[s.answers for s in cap_eval])
        colours = compare_captions(before, after, styles, references=[[caption(s.meta, "colors")] for s in cap_eval])
        return {
            "layer": mid,
            "rates": {"before": generic.before.rates, "after": generic.after.rates},
            "cider_vs_generic": list(generic.cider or ()),
            "cider_vs_colours": list(colours.cider or ()),
            "n_target_rows": len(target),
            "examples": list(zip(before[:3], after[:3], strict=True)),
        }

    _part(results, "coarse yes/no -> number", coarse_type)
    _part(results, "target answer yes -> no", yes_to_no)
    _part(results, "colour -> colour by impact", colour_by_impact)
    _part(results, "caption style: colours", caption_style)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results, indent=1, default=str))


def main() -> None:
    """``python benchmarks/steering.py [overhead options]`` or ``python benchmarks/steering.py shapes [options]``."""
    argv = sys.argv[1:]
    if argv and argv[0] == "shapes":
        shapes(argv[1:])
    else:
        overhead(argv)


if __name__ == "__main__":
    main()
