"""Write the notebooks in notebooks/ from the cell sources below, and execute them (outputs kept).

    python scripts/build_notebooks.py            # write + execute all
    python scripts/build_notebooks.py --no-run   # write only

CI runs the committed notebooks with nbmake (tests marked `notebook`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "notebooks"

SETUP = """%matplotlib inline
import warnings
warnings.filterwarnings("ignore")
import torch
import nnshift as ns
from nnshift import zoo, plots
torch.manual_seed(0)
torch.set_num_threads(1)  # the shapes models are tiny: one thread is as fast and never thrashes"""

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_concepts.ipynb": [
        (
            "md",
            "# 1. Concepts of a token of interest\n\nCapture the residual stream of `shapes-base` where it "
            "says *circle*, learn a concept dictionary, and ground each concept in words and images. The shapes "
            "world knows the truth (every circle's colour), so we can check what the concepts found.",
        ),
        ("code", SETUP),
        ("code", 'base = zoo.load("shapes-base")\nbase'),
        (
            "code",
            'samples = zoo.dataset(240, style="generic", task="caption", seed=1)\nsamples[0].image.resize((144, 144))',
        ),
        (
            "code",
            'acts = ns.capture(base, samples, layer=-1, at=ns.positions.token_of_interest("circle"),\n'
            "                  max_new_tokens=24, progress=False)\n"
            "print(acts)\nprint(acts.answers[:3])",
        ),
        ("md", "## K-means with K = number of colours"),
        (
            "code",
            'dico = ns.concepts.fit(acts, k=len(zoo.COLORS), method="kmeans", seed=0)\n'
            "words = dico.ground_text(base, top=8)\n"
            'for i, w in enumerate(words):\n    print(i, " ".join(w))',
        ),
        (
            "code",
            "from collections import Counter\n"
            "def circle_colour(s):\n"
            "    return next(o['color'] for o in s.meta['objects'] if o['shape'] == 'circle')\n"
            "assign = dico.assign(acts).tolist()\n"
            "for c in range(dico.k):\n"
            "    cols = Counter(circle_colour(acts.samples[i]) for i, a in enumerate(assign) if a == c)\n"
            "    n = sum(cols.values())\n"
            "    print(c, dict(cols.most_common(3)), f'purity {cols.most_common(1)[0][1] / n:.2f}' if n else '')",
        ),
        ("code", "top = ns.concepts.top_samples(dico, acts, n=5)\nns.concepts.plot_top_samples(top, words=words)"),
        ("md", "## Other dictionaries: Semi-NMF (CoX-LMM) and PCA"),
        (
            "code",
            'for method in ["semi_nmf", "sparse_semi_nmf", "pca"]:\n'
            "    d = ns.concepts.fit(acts, k=6, method=method, seed=0)\n"
            "    w = d.ground_text(base, top=8)\n"
            '    print(method, "overlap", round(ns.concepts.overlap(w), 3), "|", " / ".join(" ".join(x[:3]) for x in w))',
        ),
        ("code", 'dico.save("/tmp/nnshift-dico")\nns.concepts.ConceptDictionary.load("/tmp/nnshift-dico")'),
    ],
    "02_fine_tuning_shift.ipynb": [
        (
            "md",
            "# 2. How fine-tuning moved the concepts\n\n`shapes-colors` is `shapes-base` fine-tuned (LoRA) to "
            "name every object's colour. We capture both on the same images, learn a dictionary for each, and "
            "ask whether shifting the original concepts by the mean per-sample shift recovers the fine-tuned "
            "ones.",
        ),
        ("code", SETUP),
        (
            "code",
            'base = zoo.load("shapes-base")\ncolors = zoo.load("shapes-colors")\n'
            'samples = zoo.dataset(240, style="generic", task="caption", seed=2)\n'
            "print(ns.generate(base, samples[:2], max_new_tokens=24, progress=False))\n"
            "print(ns.generate(colors, samples[:2], max_new_tokens=24, progress=False))",
        ),
        (
            "code",
            'toi = ns.positions.token_of_interest("circle")\n'
            "acts_a = ns.capture(base, samples, layer=-1, at=toi, max_new_tokens=24, progress=False)\n"
            "acts_b = ns.capture(colors, acts_a.samples, layer=-1, at=toi, max_new_tokens=24, progress=False)\n"
            "acts_a, acts_b = ns.pair(acts_a, acts_b)\nlen(acts_a), len(acts_b)",
        ),
        (
            "code",
            'dico_a = ns.concepts.fit(acts_a, k=6, method="kmeans", seed=0)\n'
            'dico_b = ns.concepts.fit(acts_b, k=6, method="kmeans", seed=0)\n'
            "report = ns.shift.analyze(acts_a, acts_b, dico_a, dico_b, alpha=1.0, vlm=base)\nreport",
        ),
        ("code", "report.summary()"),
        ("code", "plots.plot_recovery(report)"),
        ("code", "plots.plot_similarity_matrix(report)"),
        ("code", "plots.plot_gain_vs(report)"),
        ("code", "plots.plot_dynamics(report)"),
        (
            "code",
            "sweep = report.alpha_sweep([0, 0.5, 1, 1.5, 2], keywords=list(zoo.COLORS), vlm=base)\n"
            "plots.plot_alpha_sweep(sweep)",
        ),
        ("code", 'report.save("/tmp/nnshift-shift")\nns.shift.ShiftReport.load("/tmp/nnshift-shift")'),
    ],
    "03_steering.ipynb": [
        (
            "md",
            "# 3. Steering without training\n\nCoarse vectors (mean of a target set minus mean of a source "
            "set), target-answer vectors, fine-grained concept vectors chosen by their measured impact, and "
            "caption style, all applied as reusable trace-time patches.",
        ),
        ("code", SETUP + "\nfrom nnshift.evaluate import compare_vqa, caption_report"),
        (
            "code",
            'base = zoo.load("shapes-base")\nlast = base.n_layers - 1\n'
            'yesno = zoo.dataset(100, task="vqa", answer_type="yes/no", seed=11)\n'
            'number = zoo.dataset(100, task="vqa", answer_type="number", seed=12)\n'
            'evalset = zoo.dataset(120, task="vqa", seed=13)\n'
            "before = ns.generate(base, evalset, max_new_tokens=4, progress=False)",
        ),
        ("md", "## Coarse: yes/no -> number"),
        (
            "code",
            'acts = ns.capture(base, yesno + number, layer=last, at="last_prompt", progress=False)\n'
            'vec = ns.steering.answer_type_vector(acts, "yes/no", "number", by="reference")\n'
            "import matplotlib.pyplot as plt\n"
            "alphas, rates = (0.0, 0.5, 1.0, 1.5, 2.0), []\n"
            "for alpha in alphas:\n"
            "    after = ns.steer(base, evalset, vec.patch(alpha=alpha), max_new_tokens=4, progress=False)\n"
            '    r = compare_vqa(before, after, evalset, touched=["yes/no", "number"])\n'
            "    rates.append({t: v[1] for t, v in r.type_rates.items()})\n"
            "    print(alpha, {t: tuple(round(x, 2) for x in v) for t, v in r.type_rates.items()})\n"
            "fig, ax = plt.subplots(figsize=(6, 3))\n"
            'for t in ("yes/no", "number", "other"):\n'
            "    ax.plot(alphas, [x.get(t, 0) for x in rates], marker='o', label=t)\n"
            "ax.set_xlabel('alpha'); ax.set_ylabel('share of answers'); ax.set_title('answer types under yes/no -> number steering')\n"
            "ax.legend();",
        ),
        ("md", "## The patch inside your own nnsight generation"),
        (
            "code",
            'patch = vec.patch(alpha=1.0, positions="all")\n'
            "inputs = base.prepare(evalset[:4])\n"
            "# min_new_tokens: statements after the patch run only if every generation step ran\n"
            "with base.model.generate(inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False) as tracer:\n"
            "    patch(base, inputs=inputs)\n"
            "    out = tracer.result.save()\n"
            '[base.decode(o[inputs["input_ids"].shape[1]:]) for o in out]',
        ),
        (
            "md",
            "## Target answer: yes -> no\n\nThe vector is as long as the states themselves on this tiny model, so "
            "the useful range of alpha is narrow: sweep it and watch both the target and the untouched answer types.",
        ),
        (
            "code",
            'yn = ns.capture(base, yesno, layer=last, at="last_prompt", progress=False)\n'
            "yn.answers = ns.generate(base, yesno, max_new_tokens=4, progress=False)\n"
            'vec_no = ns.steering.target_answer(yn, "yes", "no")\n'
            'print(f"|s| = {vec_no.norm:.1f}, mean |h| = {yn.tensor.norm(dim=-1).mean():.1f}")\n'
            "for alpha in (0.25, 0.3, 0.5, 1.0):\n"
            "    after = ns.steer(base, evalset, vec_no.patch(alpha=alpha), max_new_tokens=4, progress=False)\n"
            '    r = compare_vqa(before, after, evalset, source="yes", target="no")\n'
            '    moved = {t: round(100 * d["delta"], 1) for t, d in r.untouched_accuracy.items()}\n'
            '    print(alpha, "yes:", r.source_counts, "no:", r.target_counts, "untouched accuracy moved (points):", moved)',
        ),
        ("md", "## Fine-grained: colour -> colour, chosen by impact"),
        (
            "code",
            'colour_q = zoo.dataset(150, task="vqa", question_kind="color_of_shape", seed=14)\n'
            'colour_eval = zoo.dataset(40, task="vqa", question_kind="color_of_shape", seed=15)\n'
            'cacts = ns.capture(base, colour_q, layer=last, at="last_prompt", progress=False)\n'
            'dico = ns.concepts.fit(cacts, k=6, method="kmeans", seed=0)\n'
            "ranked = ns.steering.by_impact(base, colour_eval, ns.steering.fine_all(dico), alpha=1.0,\n"
            "                               max_new_tokens=4, progress=False)\n"
            "[(r.key, r.targets, round(r.score, 1)) for r in ranked[:5]]",
        ),
        ("md", "## Caption style: generic -> colours"),
        (
            "code",
            "mid = base.n_layers // 2\n"
            'caps = zoo.dataset(150, style="generic", task="caption", seed=16)\n'
            'src = ns.capture(base, caps, layer=mid, at=ns.positions.generated(reduce="mean"), max_new_tokens=24, progress=False)\n'
            "# target: where the colour fine-tune says a colour word (greedy shapes-base rarely names one)\n"
            'colors = zoo.load("shapes-colors")\n'
            "tgt = ns.capture(colors, caps, layer=mid, at=ns.positions.token_of_interest(list(zoo.COLORS)),\n"
            "                 max_new_tokens=24, progress=False)\n"
            "vec_cap = ns.steering.coarse(src, tgt, layer=mid)\n"
            'cap_eval = zoo.dataset(50, style="generic", task="caption", seed=17)\n'
            "b = ns.generate(base, cap_eval, max_new_tokens=24, progress=False)\n"
            "a = ns.steer(base, cap_eval, vec_cap.patch(alpha=1.0), max_new_tokens=24, progress=False)\n"
            'print(caption_report(b, ["colors"]).rates, "->", caption_report(a, ["colors"]).rates)\n'
            "list(zip(b[:3], a[:3]))",
        ),
    ],
    "04_remote_and_transformer_lens.ipynb": [
        (
            "md",
            "# 4. The same patch on NDIF and as TransformerLens hooks\n\nA `Patch` only puts tensors and "
            "nnsight operations in the trace, so it runs with `remote=True`. Here we use nnsight's serverless "
            'dry run, `remote="local"`, which serialises the request exactly as for NDIF and executes it with '
            "local modules hidden. To use a real server, set `nnsight.CONFIG.API.HOST` and your API key and "
            "pass `remote=True` (see docs/remote.md); the test suite does this against a local NDIF server.",
        ),
        ("code", SETUP + "\nimport nnsight"),
        (
            "code",
            'base = zoo.load("shapes-base")\nsamples = zoo.dataset(4, task="vqa", answer_type="yes/no", seed=21)\n'
            "vec = ns.steering.SteeringVector(torch.randn(base.hidden_size), layer=-1)\n"
            'patch = vec.patch(alpha=4.0, positions="all")\ninputs = base.prepare(samples)',
        ),
        (
            "code",
            "gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)\n"
            "with base.model.generate(inputs, **gen) as tracer:\n"
            "    patch(base, inputs=inputs)\n"
            "    out_local = tracer.result.save()\n"
            "nnsight.register(ns)  # ship nnshift's code with the request: the server does not have it\n"
            'with base.model.generate(inputs, **gen, remote="local") as tracer:\n'
            "    patch(base, inputs=inputs)\n"
            "    out_remote = tracer.result.save()\n"
            "print(out_local[:, -4:])\nprint(out_remote[:, -4:])\n"
            "assert torch.equal(out_local, out_remote)",
        ),
        (
            "md",
            "## TransformerLens\n\ntransformer-lens 4.x loads Hugging Face models through `TransformerBridge`; "
            "the same patch installs on its `hook_resid_post` points. Shown on a tiny Llama built offline "
            "(the bridge does not cover LLaVA).",
        ),
        (
            "code",
            "import tempfile\nfrom transformer_lens.model_bridge import TransformerBridge\n"
            "from nnshift.models.testing import build_tiny\n"
            'folder = build_tiny("llama", tempfile.mkdtemp())\n'
            'lm = ns.load(folder, dtype="float32", attn_implementation="eager")\n'
            'bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32, tokenizer=lm.tokenizer)\n'
            'text = [ns.Sample(id="t", prompt="what color is the dog")]\n'
            "tv = ns.steering.SteeringVector(torch.randn(lm.hidden_size), layer=1)\n"
            "p = tv.patch(alpha=2.0)\nenc = lm.prepare(text)",
        ),
        (
            "code",
            "with lm.model.trace(enc):\n    p(lm)\n    nn_logits = lm.model.lm_head.output.save()\n"
            'with p.hooked(bridge, attention_mask=enc["attention_mask"]):\n'
            '    tl_logits = bridge(enc["input_ids"], attention_mask=enc["attention_mask"])\n'
            'print("max |nnsight - TransformerLens| =", float((nn_logits - tl_logits).abs().max()))',
        ),
        ("md", "Where the edit enters: the residual stream with and without the patch, layer by layer."),
        (
            "code",
            "import matplotlib.pyplot as plt\n"
            "def resids(patch=None):\n"
            "    with lm.model.trace(enc):\n"
            "        if patch is not None:\n"
            "            patch(lm, inputs=enc)\n"
            "        hs = list().save()\n"
            "        for layer in range(1, lm.n_layers):  # in execution order: the patch edits layer 1\n"
            "            hs.append(lm.get_resid(layer)[:, -1])\n"
            "    return torch.stack(list(hs))\n"
            "diff = torch.cat([torch.zeros(1), (resids(p) - resids()).norm(dim=-1).squeeze(-1)])  # layer 0 is before the edit\n"
            "fig, ax = plt.subplots(figsize=(5, 3))\n"
            "ax.bar(range(lm.n_layers), diff.tolist()); ax.set_xlabel('layer'); ax.set_ylabel('||steered - unsteered||')\n"
            "ax.set_title('a patch at layer 1 changes layer 1 and everything after it');",
        ),
    ],
}


def build(run: bool) -> None:
    """Write (and execute) every notebook."""
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [
            nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
            for kind, src in cells
        ]
        if run:
            t0 = time.perf_counter()
            NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(OUT)}}).execute()
            print(f"{name}: executed in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        nbformat.write(nb, OUT / name)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-run", action="store_true")
    build(not ap.parse_args().no_run)
