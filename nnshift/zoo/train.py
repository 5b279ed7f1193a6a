"""Train the shapes zoo from scratch, deterministically: ``python -m nnshift.zoo.train``.

shapes-base is trained on generic captions + VQA; shapes-colors and shapes-places are LoRA adapters on top of it
trained on the colours / places captions (same caption prompt). Plain PyTorch, teacher forcing, loss on the answer
tokens only; training data is drawn on the fly from seeded generators (evaluation uses other seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.zoo.build import NUM_IMAGE_TOKENS, build_model, build_processor, pixel_values, quiet_transformers
from nnshift.zoo.world import (
    CAPTION_PROMPT,
    LLAVA_VQA_SUFFIX,
    REFERENCE_CAPTION_PROMPT,
    caption,
    question,
    random_scene,
    render,
)

__all__ = [
    "TrainConfig",
    "Batch",
    "LORA_TARGETS",
    "DEFAULT_CHECKPOINTS",
    "prompt_text",
    "make_batch",
    "answer_loss",
    "train_base",
    "train_lora",
    "train_all",
    "main",
]

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_STAGE_CODE = {"base": 101, "colors": 102, "places": 103}
PROMPT_SHARE = 0.7  # share of training prompts in the zoo's own wording; the rest use the reference / LLaVA wording


@dataclass
class TrainConfig:
    """Hyper-parameters of the whole zoo (defaults reproduce the shipped checkpoints)."""

    seed: int = 0
    threads: int = 2
    batch_size: int = 64
    base_steps: int = 2000
    base_lr: float = 1e-3
    base_caption_share: float = 0.5
    lora_steps: int = 300
    lora_lr: float = 3e-3
    lora_rank: int = 8
    lora_alpha: int = 16
    warmup: int = 50


@dataclass
class Batch:
    """A right-padded training batch; ``labels`` is -100 outside the answer tokens."""

    input_ids: Int[Tensor, "b t"]
    attention_mask: Int[Tensor, "b t"]
    labels: Int[Tensor, "b t"]
    pixel_values: Float[Tensor, "b 3 h w"]


def prompt_text(processor: Any, prompt: str, image: bool = True) -> str:
    """The chat-templated prompt for a user message (with an image placeholder unless ``image`` is False)."""
    content: list[dict[str, str]] = [{"type": "image"}] if image else []
    content.append({"type": "text", "text": prompt})
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


class _Encoder:
    """Caches token ids of templated prompts (image token expanded) and of answers + eos."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tok = processor.tokenizer
        self.image_token = processor.image_token
        self._prompts: dict[str, list[int]] = {}

    def prompt(self, prompt: str) -> list[int]:
        """Ids of the templated prompt, as the processor would produce them."""
        if prompt not in self._prompts:
            text = prompt_text(self.processor, prompt).replace(self.image_token, self.image_token * NUM_IMAGE_TOKENS)
            self._prompts[prompt] = list(self.tok(text)["input_ids"])
        return self._prompts[prompt]

    def answer(self, answer: str) -> list[int]:
        """Ids of the answer followed by eos."""
        return [*self.tok(answer, add_special_tokens=False)["input_ids"], self.tok.eos_token_id]


def make_batch(
    encoder: _Encoder, rng: np.random.Generator, batch_size: int, style: str, caption_share: float = 1.0
) -> Batch:
    """Draw ``batch_size`` fresh examples: captions of ``style`` with probability ``caption_share``, else VQA."""
    images, seqs, starts = [], [], []
    for _ in range(batch_size):
        scene = random_scene(rng)
        images.append(render(scene))
        if rng.random() < caption_share:
            prompt = CAPTION_PROMPT if rng.random() < PROMPT_SHARE else REFERENCE_CAPTION_PROMPT
            answer = caption(scene, style, rng)
        else:
            prompt, answer, _, _ = question(scene, rng)
            if rng.random() >= PROMPT_SHARE:
                prompt += LLAVA_VQA_SUFFIX
        p, a = encoder.prompt(prompt), encoder.answer(answer)
        seqs.append(p + a)
        starts.append(len(p))
    t = max(len(s) for s in seqs)
    pad = encoder.tok.pad_token_id
    ids = torch.full((batch_size, t), pad, dtype=torch.long)
    mask = torch.zeros((batch_size, t), dtype=torch.long)
    labels = torch.full((batch_size, t), -100, dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, st : len(s)] = torch.tensor(s[st:])
    return Batch(ids, mask, labels, pixel_values(images))


def answer_loss(model: Any, batch: Batch) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy over the answer tokens (teacher forcing)."""
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values
    ).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1), ignore_index=-100
    )


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _fit(
    model: Any,
    params: Sequence[torch.nn.Parameter],
    encoder: _Encoder,
    stage: str,
    style: str,
    steps: int,
    lr: float,
    cfg: TrainConfig,
    caption_share: float,
    log: Callable[[str], None] | None,
) -> list[float]:
    """The training loop shared by the base model and the adapters; returns the loss of every step."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, min(cfg.warmup, steps)))
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        rng = np.random.default_rng([cfg.seed, _STAGE_CODE[stage], step])
        batch = make_batch(encoder, rng, cfg.batch_size, style, caption_share)
        loss = answer_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log(
                f"[{stage}] step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f} ({time.perf_counter() - t0:.0f} s)"
            )
    model.eval()
    return losses


def _setup(cfg: TrainConfig) -> None:
    """Seed, deterministic kernels, thread count."""
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    quiet_transformers()


def train_base(
    cfg: TrainConfig, steps: int | None = None, log: Callable[[str], None] | None = None
) -> tuple[Any, Any, list[float]]:
    """Train shapes-base from scratch on generic captions + VQA; returns (model, processor, losses)."""
    _setup(cfg)
    processor = build_processor()
    model = build_model(seed=cfg.seed)
    steps = cfg.base_steps if steps is None else steps
    params = [p for p in model.parameters() if p.requires_grad]
    losses = _fit(
        model, params, _Encoder(processor), "base", "generic", steps, cfg.base_lr, cfg, cfg.base_caption_share, log
    )
    return model, processor, losses


def train_lora(
    base: Any,
    processor: Any,
    style: str,
    cfg: TrainConfig,
    steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Any, list[float]]:
    """Fine-tune a LoRA adapter of ``base`` (a copy is made) on the captions of ``style``; returns (peft model, losses)."""
    import copy

    from peft import LoraConfig, get_peft_model

    _setup(cfg)
    torch.manual_seed(cfg.seed + _STAGE_CODE[style])
    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none"
    )
    model = get_peft_model(copy.deepcopy(base), lora)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = cfg.lora_steps if steps is None else steps
    losses = _fit(model, params, _Encoder(processor), style, style, steps, cfg.lora_lr, cfg, 1.0, log)
    return model, losses


def _summary(losses: list[float], seconds: float) -> dict[str, Any]:
    """What to record about a training stage."""
    return {
        "steps": len(losses),
        "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "seconds": round(seconds, 1),
    }


def train_all(
    out_dir: str | Path = DEFAULT_CHECKPOINTS, cfg: TrainConfig | None = None, log: Callable[[str], None] | None = print
) -> dict[str, Any]:
    """Train and save the three checkpoints under ``out_dir``; returns the manifest written to ``zoo.json``."""
    import peft
    import transformers

    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    base, processor, losses = train_base(cfg, log=log)
    stages: dict[str, Any] = {"shapes-base": _summary(losses, time.perf_counter() - t0)}
    with tempfile.TemporaryDirectory(dir=out_dir.parent if out_dir.parent.exists() else None) as tmp:
        staging = Path(tmp)
        base.config.name_or_path = "shapes-base"
        base.save_pretrained(staging / "shapes-base")
        processor.save_pretrained(staging / "shapes-base")
        for style in ("colors", "places"):
            t0 = time.perf_counter()
            model, losses = train_lora(base, processor, style, cfg, log=log)
            stages[f"shapes-{style}"] = _summary(losses, time.perf_counter() - t0)
            model.peft_config["default"].base_model_name_or_path = "shapes-base"
            model.save_pretrained(staging / f"shapes-{style}")
        manifest = {
            "models": {
                "shapes-base": {"base": "shapes-base", "adapter": None, "trained_on": "generic captions + VQA"},
                "shapes-colors": {"base": "shapes-base", "adapter": "shapes-colors", "trained_on": "colors captions"},
                "shapes-places": {"base": "shapes-base", "adapter": "shapes-places", "trained_on": "places captions"},
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
        for name in ("shapes-base", "shapes-colors", "shapes-places", "zoo.json"):
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
    """Command line: train every checkpoint (defaults reproduce the shipped ones)."""
    ap = argparse.ArgumentParser(prog="python -m nnshift.zoo.train", description=__doc__)
    ap.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINTS, help="where to write the checkpoints")
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads)
    ap.add_argument("--base-steps", type=int, default=TrainConfig.base_steps)
    ap.add_argument("--lora-steps", type=int, default=TrainConfig.lora_steps)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    args = ap.parse_args(argv)
    cfg = TrainConfig(
        seed=args.seed,
        threads=args.threads,
        base_steps=args.base_steps,
        lora_steps=args.lora_steps,
        batch_size=args.batch_size,
    )
    train_all(args.out, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
