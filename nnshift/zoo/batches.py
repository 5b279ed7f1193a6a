"""Batches and losses of the zoo training: encoding prompts and answers, and the three stages' losses.

Split from ``nnshift.zoo.train`` (which re-exports every name); the numbers are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from nnshift.zoo.build import NUM_IMAGE_TOKENS, pixel_values
from nnshift.zoo.world import (
    CAPTION_PROMPT,
    LLAVA_VQA_SUFFIX,
    REFERENCE_CAPTION_PROMPT,
    caption,
    cell_words,
    question,
    random_scene,
    render,
)

__all__ = [
    "PROMPT_SHARE",
    "Batch",
    "Encoder",
    "prompt_text",
    "make_batch",
    "answer_loss",
    "symbolic_embeds",
    "symbolic_loss",
    "align_loss",
]

PROMPT_SHARE = 0.7  # share of training prompts in the zoo's own wording; the rest use the reference / LLaVA wording


@dataclass
class Batch:
    """A right-padded training batch; ``labels`` is -100 outside the answer tokens; ``cells`` the symbolic scene."""

    input_ids: Int[Tensor, "b t"]
    attention_mask: Int[Tensor, "b t"]
    labels: Int[Tensor, "b t"]
    pixel_values: Float[Tensor, "b 3 h w"]
    cells: Int[Tensor, "b 9 4"]


def prompt_text(processor: Any, prompt: str, image: bool = True) -> str:
    """The chat-templated prompt for a user message (with an image placeholder unless ``image`` is False)."""
    content: list[dict[str, str]] = [{"type": "image"}] if image else []
    content.append({"type": "text", "text": prompt})
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


class Encoder:
    """Token ids of templated prompts (image token expanded, cached) and of answers + eos; word ids of cells."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tok = processor.tokenizer
        self.image_token = processor.image_token
        self.image_token_id = int(self.tok.convert_tokens_to_ids(self.image_token))
        self.vocab = self.tok.get_vocab()
        self._prompts: dict[str, list[int]] = {}

    def prompt(self, prompt: str) -> list[int]:
        """Ids of the templated prompt, as the processor produces them."""
        if prompt not in self._prompts:
            text = prompt_text(self.processor, prompt).replace(self.image_token, self.image_token * NUM_IMAGE_TOKENS)
            self._prompts[prompt] = list(self.tok(text)["input_ids"])
        return self._prompts[prompt]

    def answer(self, answer: str) -> list[int]:
        """Ids of the answer followed by eos."""
        return [*self.tok(answer, add_special_tokens=False)["input_ids"], self.tok.eos_token_id]

    def cells(self, scene: dict[str, Any]) -> list[list[int]]:
        """Word ids of the symbolic scene: [9 cells][4 words]."""
        return [[self.vocab[w] for w in row] for row in cell_words(scene)]


def make_batch(
    encoder: Encoder,
    rng: np.random.Generator,
    batch_size: int,
    style: str = "generic",
    caption_share: float = 1.0,
    kinds: Sequence[str] | None = None,
    relabel: Callable[[str, str, str, np.random.Generator], str] | None = None,
) -> Batch:
    """Draw ``batch_size`` fresh examples: captions of ``style`` with probability ``caption_share``, else VQA
    (of the given question kinds, all by default); ``relabel(question, answer, kind, rng)`` may replace a VQA
    answer (the behaviour fine-tunes; None draws exactly what it always did)."""
    images, seqs, starts, cells = [], [], [], []
    for _ in range(batch_size):
        scene = random_scene(rng)
        images.append(render(scene))
        cells.append(encoder.cells(scene))
        if rng.random() < caption_share:
            prompt = CAPTION_PROMPT if rng.random() < PROMPT_SHARE else REFERENCE_CAPTION_PROMPT
            answer = caption(scene, style, rng)
        else:
            kind = None if kinds is None else kinds[int(rng.integers(0, len(kinds)))]
            prompt, answer, _, qkind = question(scene, rng, kind=kind)
            if relabel is not None:
                answer = relabel(prompt, answer, qkind, rng)
            if rng.random() >= PROMPT_SHARE:
                prompt += LLAVA_VQA_SUFFIX
        p, a = encoder.prompt(prompt), encoder.answer(answer)
        seqs.append(p + a)
        starts.append(len(p))
    t = max(len(s) for s in seqs)
    ids = torch.full((batch_size, t), encoder.tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((batch_size, t), dtype=torch.long)
    labels = torch.full((batch_size, t), -100, dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, st : len(s)] = torch.tensor(s[st:])
    return Batch(ids, mask, labels, pixel_values(images), torch.tensor(cells, dtype=torch.long))


def _ce(logits: Float[Tensor, "b t v"], labels: Int[Tensor, "b t"], smoothing: float = 0.0) -> Float[Tensor, ""]:
    """Next-token cross-entropy over the labelled (answer) tokens."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        label_smoothing=smoothing,
    )


def answer_loss(model: Any, batch: Batch, smoothing: float = 0.0) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy over the answer tokens (teacher forcing), on the real images."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values)
    return _ce(out.logits, batch.labels, smoothing)


def symbolic_embeds(model: Any, batch: Batch, image_token_id: int) -> Float[Tensor, "b t d"]:
    """Input embeddings where the image tokens hold the symbolic cells (sum of the cell words' embeddings)."""
    emb_layer = model.get_input_embeddings()
    emb = emb_layer(batch.input_ids)
    cells = emb_layer(batch.cells).sum(2)  # [b, 9, d]
    mask = (batch.input_ids == image_token_id).unsqueeze(-1)
    return emb.masked_scatter(mask, cells.to(emb.dtype))


def symbolic_loss(model: Any, batch: Batch, image_token_id: int, smoothing: float = 0.0) -> Float[Tensor, ""]:
    """Answer-token cross-entropy with symbolic scenes in place of the image features."""
    out = model(inputs_embeds=symbolic_embeds(model, batch, image_token_id), attention_mask=batch.attention_mask)
    return _ce(out.logits, batch.labels, smoothing)


def align_loss(model: Any, batch: Batch) -> Float[Tensor, ""]:
    """Relative squared error between the projected image features and the symbolic cell embeddings."""
    target = model.get_input_embeddings()(batch.cells).sum(2).detach()  # [b, 9, d]
    feats = model.model.get_image_features(pixel_values=batch.pixel_values).pooler_output
    feats = torch.stack(list(feats))
    return ((feats - target) ** 2).sum(-1).mean() / (target**2).sum(-1).mean()
