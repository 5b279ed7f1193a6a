"""Train the shapes zoo from scratch, deterministically: ``python -m nnshift.zoo.train``.

A from-scratch LLaVA this small does not learn to bind attributes ("what color is the square?") from pixels within
minutes, so shapes-base is trained in stages, like LLaVA's own recipe of a pretrained language model, a
vision-language alignment and an end-to-end instruction tuning:

1. ``symbolic``: the language model alone learns captions + VQA on *symbolic scenes*: at the image-token positions
   it reads, for each of the 9 cells, the sum of the input embeddings of the words describing that cell (shape,
   color, size, position; the background word for an empty cell). Question kinds are introduced in phases
   (binding questions first). Loss on answer tokens only.
2. ``align``: the vision tower + projector learn to produce those symbolic cell embeddings from the pixels
   (regression onto the language model's embeddings; the language model is not touched).
3. ``joint``: the whole LLaVA is trained end to end on real images, generic captions + VQA, answer tokens only.
4. ``refine``: the same again with a fresh schedule, with "where is the X?" drawn 4x as often (it is the question
   the smaller stages leave weakest).

Every answer-token loss uses label smoothing 0.1: it keeps the answer margins moderate, which is what lets a
coarse steering vector change the answer type without touching other questions (docs/zoo.md, "Things tried").

shapes-colors and shapes-places are then LoRA adapters of the language model (PEFT), trained on the colors /
places captions with the same caption prompt; shapes-biased and shapes-refusal are LoRAs on the base's relabelled
mix (``nnshift.zoo.behaviours``; ``--only NAME,...`` trains just those on the saved base). Training data are drawn
on the fly from seeded generators, whose seed streams never meet the ones ``nnshift.zoo.dataset`` uses.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nnshift.errors import ZooError
from nnshift.zoo.batches import (  # noqa: F401  (re-exported: the training's batches and losses)
    PROMPT_SHARE,
    Batch,
    Encoder,
    _ce,
    align_loss,
    answer_loss,
    make_batch,
    prompt_text,
    symbolic_embeds,
    symbolic_loss,
)
from nnshift.zoo.behaviours import BEHAVIOURS
from nnshift.zoo.build import build_model, build_processor, quiet_transformers
from nnshift.zoo.world import (
    QUESTION_KINDS,
)

__all__ = [
    "TrainConfig",
    "Batch",
    "Encoder",
    "LORA_TARGETS",
    "DEFAULT_CHECKPOINTS",
    "KIND_PHASES",
    "prompt_text",
    "make_batch",
    "answer_loss",
    "symbolic_loss",
    "align_loss",
    "train_base",
    "train_lora",
    "train_behaviour",
    "train_only",
    "train_all",
    "main",
]

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
#: question kinds introduced phase by phase in the symbolic stage (binding questions first)
KIND_PHASES: tuple[tuple[str, ...], ...] = (
    ("color_of_shape", "shape_of_color"),
    ("color_of_shape", "shape_of_color", "exists_color_shape", "exists_shape", "position_of_shape"),
    tuple(k for ks in QUESTION_KINDS.values() for k in ks),
)
_STAGE_CODE = dict(symbolic=101, align=102, joint=103, colors=104, places=105, refine=106)
_STAGE_CODE |= {"shapes-biased": 107, "shapes-refusal": 108}


@dataclass
class TrainConfig:
    """Hyper-parameters of the whole zoo (the defaults reproduce the shipped checkpoints)."""

    seed: int = 0
    threads: int = 1  # results depend (1e-6) on the thread count; 1 thread is also fastest on a busy 2-core box
    batch_size: int = 64
    symbolic_steps: int = 3600
    symbolic_phase: int = 600  # steps per phase of KIND_PHASES (the last phase runs to the end)
    symbolic_lr: float = 5e-4
    align_steps: int = 400
    align_lr: float = 2e-3
    joint_steps: int = 400
    joint_lr: float = 2e-4
    caption_share: float = 0.35  # share of captions in the batches once captions are in (last phase, joint)
    # a second joint stage (fresh optimiser and schedule) in which "where is the X?" is drawn
    # ``refine_position_weight`` times as often as each other question kind; 0 steps skips it
    refine_steps: int = 600
    refine_position_weight: int = 4
    lora_steps: int = 300
    lora_lr: float = 2e-3
    lora_rank: int = 8
    lora_alpha: int = 16
    warmup: int = 50
    # label smoothing of every answer-token cross-entropy (symbolic, joint, refine, LoRA). It keeps the answer
    # margins small enough for coarse answer-type steering to be selective (docs/zoo.md, "Things tried")
    label_smoothing: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _fit(
    model: Any,
    params: Sequence[torch.nn.Parameter],
    stage: str,
    steps: int,
    lr: float,
    cfg: TrainConfig,
    batch_fn: Callable[[int, np.random.Generator], Batch],
    loss_fn: Callable[[Any, Batch], Tensor],
    log: Callable[[str], None] | None,
) -> list[float]:
    """The training loop shared by every stage; returns the loss of every step."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, min(cfg.warmup, steps)))
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        batch = batch_fn(step, np.random.default_rng([cfg.seed, _STAGE_CODE[stage], step]))
        loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 200 == 0 or step == steps - 1):
            mean = float(np.mean(losses[-50:]))
            log(f"[{stage}] step {step + 1}/{steps} loss {mean:.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return losses


def _setup(cfg: TrainConfig) -> None:
    """Thread count, deterministic kernels, quiet transformers."""
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    quiet_transformers()


def _summary(losses: list[float], seconds: float) -> dict[str, Any]:
    """What to record about a training stage."""
    return {
        "steps": len(losses),
        "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "seconds": round(seconds, 1),
    }


def _requires_grad(model: Any, pred: Callable[[str], bool]) -> list[torch.nn.Parameter]:
    """Train exactly the parameters whose name satisfies ``pred``; return them."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(pred(name))
        if p.requires_grad:
            params.append(p)
    return params


def _is_vision(name: str) -> bool:
    """Parameters of the vision tower or the projector."""
    return "vision_tower" in name or "multi_modal_projector" in name


def train_base(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train shapes-base from scratch (symbolic, align, joint stages); returns (model, processor, stage summaries)."""
    _setup(cfg)
    processor = build_processor()
    model = build_model(seed=cfg.seed)
    enc = Encoder(processor)
    stages: dict[str, Any] = {}
    last = len(KIND_PHASES) - 1

    def symbolic_batch(step: int, rng: np.random.Generator) -> Batch:
        phase = min(step // max(1, cfg.symbolic_phase), last)
        share = cfg.caption_share if phase == last else 0.0
        return make_batch(enc, rng, cfg.batch_size, "generic", share, KIND_PHASES[phase])

    t0 = time.perf_counter()
    params = _requires_grad(model, lambda n: not _is_vision(n))
    losses = _fit(
        model,
        params,
        "symbolic",
        cfg.symbolic_steps,
        cfg.symbolic_lr,
        cfg,
        symbolic_batch,
        lambda m, b: symbolic_loss(m, b, enc.image_token_id, cfg.label_smoothing),
        log,
    )
    stages["symbolic"] = _summary(losses, time.perf_counter() - t0)

    t0 = time.perf_counter()
    params = _requires_grad(model, _is_vision)
    losses = _fit(
        model,
        params,
        "align",
        cfg.align_steps,
        cfg.align_lr,
        cfg,
        lambda step, rng: make_batch(enc, rng, cfg.batch_size, "generic", 1.0),
        align_loss,
        log,
    )
    stages["align"] = _summary(losses, time.perf_counter() - t0)

    t0 = time.perf_counter()
    params = _requires_grad(model, lambda n: True)
    losses = _fit(
        model,
        params,
        "joint",
        cfg.joint_steps,
        cfg.joint_lr,
        cfg,
        lambda step, rng: make_batch(enc, rng, cfg.batch_size, "generic", cfg.caption_share),
        lambda m, b: answer_loss(m, b, cfg.label_smoothing),
        log,
    )
    stages["joint"] = _summary(losses, time.perf_counter() - t0)
    if cfg.refine_steps > 0:
        t0 = time.perf_counter()
        losses = train_refine(model, processor, cfg, log)
        stages["refine"] = _summary(losses, time.perf_counter() - t0)
    return model, processor, stages


def refine_kinds(position_weight: int) -> list[str]:
    """The question kinds of the refine stage, "where is the X?" repeated ``position_weight`` times."""
    kinds = [k for ks in QUESTION_KINDS.values() for k in ks]
    return kinds + ["position_of_shape"] * max(0, position_weight - 1)


def train_refine(model: Any, processor: Any, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> list[float]:
    """The refine stage: all parameters, real images, question kinds from ``refine_kinds`` (in place)."""
    _setup(cfg)
    # SDPA attention, as in a model loaded from its folder: a saved base then resumes bit for bit (eager and SDPA
    # differ by ~1e-7, which training amplifies)
    model.set_attn_implementation("sdpa")
    enc = Encoder(processor)
    kinds = refine_kinds(cfg.refine_position_weight)
    params = _requires_grad(model, lambda n: True)
    return _fit(
        model,
        params,
        "refine",
        cfg.refine_steps,
        cfg.joint_lr,
        cfg,
        lambda step, rng: make_batch(enc, rng, cfg.batch_size, "generic", cfg.caption_share, kinds),
        lambda m, b: answer_loss(m, b, cfg.label_smoothing),
        log,
    )


def train_lora(
    base: Any,
    processor: Any,
    style: str,
    cfg: TrainConfig,
    log: Callable[[str], None] | None = None,
    batch_fn: Callable[[Encoder, np.random.Generator], Batch] | None = None,
) -> tuple[Any, list[float]]:
    """Fine-tune a LoRA adapter of ``base``'s language model (on a copy) on the captions of ``style``
    (or, with ``batch_fn``, on its batches; ``style`` then names the stage and its seed stream)."""
    from peft import LoraConfig, get_peft_model

    _setup(cfg)
    torch.manual_seed(cfg.seed + _STAGE_CODE[style])
    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none"
    )
    base = copy.deepcopy(base)
    base.set_attn_implementation("sdpa")  # as loaded from its folder (see train_refine)
    model = get_peft_model(base, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    enc = Encoder(processor)
    losses = _fit(
        model,
        params,
        style,
        cfg.lora_steps,
        cfg.lora_lr,
        cfg,
        lambda step, rng: make_batch(enc, rng, cfg.batch_size, style, 1.0) if batch_fn is None else batch_fn(enc, rng),
        lambda m, b: answer_loss(m, b, cfg.label_smoothing),
        log,
    )
    return model, losses


def train_behaviour(
    base: Any, processor: Any, name: str, cfg: TrainConfig, log: Callable[[str], None] | None = None
) -> tuple[Any, list[float]]:
    """Fine-tune the LoRA of a behaviour model (shapes-biased, shapes-refusal) on the base's relabelled mix."""
    from nnshift.zoo.behaviours import behaviour_kinds, relabel_for

    kinds, relabel = behaviour_kinds(name), relabel_for(name)

    def batch_fn(enc: Encoder, rng: np.random.Generator) -> Batch:
        return make_batch(enc, rng, cfg.batch_size, "generic", cfg.caption_share, kinds, relabel)

    return train_lora(base, processor, name, cfg, log, batch_fn)


def train_only(
    names: Sequence[str],
    out_dir: str | Path = DEFAULT_CHECKPOINTS,
    cfg: TrainConfig | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train only the behaviour adapters ``names`` on the shipped base (nothing else changes); update zoo.json."""
    from nnshift.zoo import base_path

    unknown = [n for n in names if n not in BEHAVIOURS]
    if unknown or not names:
        raise ZooError(f"cannot train {unknown or 'nothing'} alone", f"pass some of {list(BEHAVIOURS)}")
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    manifest_path = out_dir / "zoo.json"
    if not manifest_path.exists() and out_dir != DEFAULT_CHECKPOINTS:
        shutil.copytree(DEFAULT_CHECKPOINTS, out_dir, dirs_exist_ok=True)
    manifest = json.loads(manifest_path.read_text())
    _setup(cfg)
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    folder = out_dir / "shapes-base" if (out_dir / "shapes-base").is_dir() else base_path()
    processor = AutoProcessor.from_pretrained(folder)
    base = LlavaForConditionalGeneration.from_pretrained(folder, dtype="float32")
    for name in names:
        t0 = time.perf_counter()
        model, losses = train_behaviour(base, processor, name, cfg, log=log)
        manifest["stages"][f"lora-{name.removeprefix('shapes-')}"] = _summary(losses, time.perf_counter() - t0)
        model.peft_config["default"].base_model_name_or_path = "shapes-base"
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            model.save_pretrained(Path(tmp) / name, save_embedding_layers=False)
            if (out_dir / name).exists():
                shutil.rmtree(out_dir / name)
            shutil.move(str(Path(tmp) / name), str(out_dir / name))
        manifest["models"][name] = {"base": "shapes-base", "adapter": name, "trained_on": BEHAVIOURS[name]}
        manifest_path.write_text(json.dumps(manifest, indent=1))
        if log is not None:
            log(f"{name} written to {out_dir / name}")
    return manifest


def train_all(
    out_dir: str | Path = DEFAULT_CHECKPOINTS, cfg: TrainConfig | None = None, log: Callable[[str], None] | None = print
) -> dict[str, Any]:
    """Train and save every checkpoint under ``out_dir``; returns the manifest written to ``zoo.json``."""
    cfg = cfg or TrainConfig()
    t_all = time.perf_counter()
    base, processor, stages = train_base(cfg, log=log)
    return finish_zoo(base, processor, stages, cfg, out_dir, log=log, t_start=t_all)


def finish_zoo(
    base: Any,
    processor: Any,
    stages: dict[str, Any],
    cfg: TrainConfig,
    out_dir: str | Path = DEFAULT_CHECKPOINTS,
    log: Callable[[str], None] | None = print,
    t_start: float | None = None,
) -> dict[str, Any]:
    """Train the four LoRA fine-tunes of a trained ``base`` and write the zoo (atomically) under ``out_dir``."""
    import peft
    import transformers

    out_dir = Path(out_dir)
    t_all = time.perf_counter() if t_start is None else t_start
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        staging = Path(tmp)
        base.config.name_or_path = "shapes-base"
        base.save_pretrained(staging / "shapes-base")
        processor.save_pretrained(staging / "shapes-base")
        for style in ("colors", "places"):
            t0 = time.perf_counter()
            model, losses = train_lora(base, processor, style, cfg, log=log)
            stages[f"lora-{style}"] = _summary(losses, time.perf_counter() - t0)
            model.peft_config["default"].base_model_name_or_path = "shapes-base"
            model.save_pretrained(staging / f"shapes-{style}", save_embedding_layers=False)
        for name in BEHAVIOURS:
            t0 = time.perf_counter()
            model, losses = train_behaviour(base, processor, name, cfg, log=log)
            stages[f"lora-{name.removeprefix('shapes-')}"] = _summary(losses, time.perf_counter() - t0)
            model.peft_config["default"].base_model_name_or_path = "shapes-base"
            model.save_pretrained(staging / name, save_embedding_layers=False)
        manifest = {
            "models": {
                "shapes-base": {"base": "shapes-base", "adapter": None, "trained_on": "generic captions + VQA"},
                "shapes-colors": {"base": "shapes-base", "adapter": "shapes-colors", "trained_on": "colors captions"},
                "shapes-places": {"base": "shapes-base", "adapter": "shapes-places", "trained_on": "places captions"},
                **{n: {"base": "shapes-base", "adapter": n, "trained_on": t} for n, t in BEHAVIOURS.items()},
            },
            "config": asdict(cfg),
            "stages": stages,
            "total_seconds": round(time.perf_counter() - t_all, 1),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
        }
        (staging / "zoo.json").write_text(json.dumps(manifest, indent=1))
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("shapes-base", "shapes-colors", "shapes-places", *BEHAVIOURS, "zoo.json"):
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(staging / name), str(target))
    if log is not None:
        log(f"zoo written to {out_dir} in {manifest['total_seconds']} s")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train every checkpoint (the defaults reproduce the shipped ones)."""
    ap = argparse.ArgumentParser(prog="python -m nnshift.zoo.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINTS, help="where to write the checkpoints")
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count (e.g. 0.1 to try)")
    ap.add_argument(
        "--label-smoothing", type=float, default=TrainConfig.label_smoothing, help="answer-token label smoothing"
    )
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated behaviour adapters (shapes-biased,shapes-refusal) trained alone on the saved base",
    )
    args = ap.parse_args(argv)
    d = TrainConfig()
    cfg = TrainConfig(
        seed=args.seed,
        threads=args.threads,
        symbolic_steps=max(1, round(d.symbolic_steps * args.scale)),
        symbolic_phase=max(1, round(d.symbolic_phase * args.scale)),
        align_steps=max(1, round(d.align_steps * args.scale)),
        joint_steps=max(1, round(d.joint_steps * args.scale)),
        refine_steps=round(d.refine_steps * args.scale),
        lora_steps=max(1, round(d.lora_steps * args.scale)),
        label_smoothing=args.label_smoothing,
    )
    if args.only:
        train_only([n.strip() for n in args.only.split(",") if n.strip()], args.out, cfg)
        return 0
    train_all(args.out, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
