"""ModelAdapter: a declarative map from one architecture family to its HF module paths and prompt format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from nnshift.errors import AdapterValidationError

__all__ = [
    "ModelAdapter",
    "Messages",
    "PromptStyle",
    "BlockOutput",
    "chat_messages",
    "resolve_module",
    "text_config_of",
]

Messages = list[dict[str, Any]]
PromptStyle = Literal["chat", "prefix"]
BlockOutput = Literal["auto", "tensor", "tuple"]


def chat_messages(prompt: str, has_image: bool, image_first: bool = True) -> Messages:
    """One user turn in the HF multimodal chat format: an image part (if any) and a text part."""
    text = {"type": "text", "text": prompt}
    if not has_image:
        return [{"role": "user", "content": [text]}]
    parts = [{"type": "image"}, text] if image_first else [text, {"type": "image"}]
    return [{"role": "user", "content": parts}]


def resolve_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule of `root` at dotted `path` (``""`` is `root` itself); AttributeError if absent."""
    module = root
    for part in path.split(".") if path else []:
        if part.isdigit() and isinstance(module, (nn.ModuleList, nn.Sequential)):
            module = module[int(part)]
        else:
            module = getattr(module, part)
            if not isinstance(module, nn.Module):
                raise AttributeError(f"{path!r}: {part!r} is not a module")
    return module


def text_config_of(config: Any, attr: str | None) -> Any:
    """The language model's config: ``config.<attr>`` (e.g. ``text_config``), or `config` itself."""
    if attr is None:
        return config
    sub = getattr(config, attr, None)
    return config if sub is None else sub


@dataclass(frozen=True)
class ModelAdapter:
    """What nnshift needs to know about one architecture family, as data (HF module paths, tokens, prompt style).

    Paths are dotted attribute paths from the top HF module (the ``*ForConditionalGeneration`` /
    ``*ForCausalLM`` object). ``layers`` is the language model's decoder-layer ModuleList: its block outputs
    are the residual stream. Nothing here may point into the vision tower.
    """

    family: str
    architectures: tuple[str, ...]
    layers: str
    final_norm: str
    unembed: str = "lm_head"
    multimodal: bool = True
    task: str = "image-text-to-text"
    text_config: str | None = "text_config"
    image_token_id_attrs: tuple[str, ...] = ("image_token_id", "image_token_index")
    image_token: str | None = None
    end_of_turn_tokens: tuple[str, ...] = ()
    prompt_style: PromptStyle = "chat"
    image_first: bool = True
    nested_images: bool = False
    block_output: BlockOutput = "auto"
    build_messages: Callable[[str, bool], Messages] | None = None
    notes: str = ""
    #: verified: a KV cache of the prompt minus its last token, continued on the full ids/mask without image
    #: inputs, generates what the plain run does (causal prompt, no state kept outside the cache); sweeps then
    #: run that prefix once per sample (`nnshift.steering.prefix`)
    shares_prompt_prefix: bool = False
    #: a decoder block's attention submodule (attribute name): once it has run, the block's keys and values are in
    #: the KV cache, so a pass that only fills the cache may stop there (`nnshift.steering.prefix`)
    attention: str = "self_attn"

    def messages(self, prompt: str, has_image: bool) -> Messages:
        """The chat messages for one prompt (with an image placeholder when `has_image`)."""
        if self.build_messages is not None:
            return self.build_messages(prompt, has_image)
        if not self.multimodal:
            return [{"role": "user", "content": prompt}]
        return chat_messages(prompt, has_image, self.image_first)

    def text_config_of(self, config: Any) -> Any:
        """The language model's config inside the full model config."""
        return text_config_of(config, self.text_config)

    def image_token_id(self, config: Any, tokenizer: Any) -> int | None:
        """The id of the image placeholder token (None for text-only models)."""
        if not self.multimodal:
            return None
        for attr in self.image_token_id_attrs:
            value = getattr(config, attr, None)
            if isinstance(value, int):
                return value
        if self.image_token is not None and tokenizer is not None:
            tid = tokenizer.convert_tokens_to_ids(self.image_token)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                return tid
        return None

    def validate(self, hf: nn.Module) -> tuple[int, int, int]:
        """Check the paths against a loaded HF model; return (n_layers, hidden_size, vocab_size)."""
        where = f"adapter {self.family!r} on {type(hf).__name__}"
        hint = "the adapter's module paths do not match this transformers version; fix them or register a new adapter"
        try:
            layers = resolve_module(hf, self.layers)
            norm = resolve_module(hf, self.final_norm)
            unembed = resolve_module(hf, self.unembed)
        except AttributeError as exc:
            raise AdapterValidationError(f"{where}: module path not found: {exc}", hint) from exc
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise AdapterValidationError(f"{where}: {self.layers!r} is not a non-empty ModuleList", hint)
        tcfg = self.text_config_of(hf.config)
        expected = getattr(tcfg, "num_hidden_layers", None)
        if expected is not None and len(layers) != expected:
            raise AdapterValidationError(
                f"{where}: {self.layers!r} has {len(layers)} layers but the text config says {expected}"
                " (does the path point into the vision tower?)",
                hint,
            )
        hidden = getattr(tcfg, "hidden_size", None)
        weight = getattr(unembed, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise AdapterValidationError(f"{where}: {self.unembed!r} has no 2-D weight", hint)
        vocab, d = int(weight.shape[0]), int(weight.shape[1])
        if hidden is not None and d != hidden:
            raise AdapterValidationError(
                f"{where}: unembedding {self.unembed!r} takes {d} features but hidden_size is {hidden}", hint
            )
        cfg_vocab = getattr(tcfg, "vocab_size", None)
        if cfg_vocab is not None and vocab != cfg_vocab:
            raise AdapterValidationError(
                f"{where}: unembedding {self.unembed!r} outputs {vocab} logits but vocab_size is {cfg_vocab}", hint
            )
        norm_w = getattr(norm, "weight", None)
        if isinstance(norm_w, torch.Tensor) and norm_w.shape[-1] != d:
            raise AdapterValidationError(
                f"{where}: final norm {self.final_norm!r} has size {norm_w.shape[-1]}, expected {d}", hint
            )
        return len(layers), d, vocab
