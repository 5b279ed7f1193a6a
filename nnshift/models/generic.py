"""A generic adapter for image-text models with no registered adapter: module paths inferred, then validated.

`adapter_for` returns the registered adapter when there is one. Otherwise, for a model whose config has a
``vision_config``, it finds the text decoder's layer ModuleList (as many layers as the text config says, outside
the vision tower), the final norm beside it, the unembedding (``get_output_embeddings``) and the image-token id
(config, then processor), and returns a `GenericAdapter`. Its `validate` also runs a 2-token forward and checks that
each hooked block output equals ``output_hidden_states``; it warns once per architecture with what it inferred.
What cannot be found raises `UnsupportedModelError` saying what and how to register an adapter.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from nnshift.errors import AdapterValidationError, UnsupportedModelError
from nnshift.models.adapter import ModelAdapter, resolve_module, text_config_of
from nnshift.models.registry import REGISTER_HINT
from nnshift.models.registry import adapter_for as registered_adapter_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["GenericAdapter", "adapter_for", "infer_adapter"]

_NOT_TEXT = ("vision", "visual", "image", "audio", "vit", "tower", "encoder", "projector", "resampler", "perceiver")
_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm", "norm_f")
_IMAGE_ATTRS = ("image_token_id", "image_token_index", "image_pad_token_id")
_WARNED: set[str] = set()


def _fail(what: str, missing: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{what}: no adapter is registered and the generic adapter could not find {missing}", REGISTER_HINT
    )


@dataclass(frozen=True)
class GenericAdapter(ModelAdapter):
    """A `ModelAdapter` inferred from the model; `validate` also checks hooked block outputs against the model's own."""

    def validate(self, hf: nn.Module) -> tuple[int, int, int]:
        """The path checks of `ModelAdapter.validate`, then a forward comparing hooks with ``output_hidden_states``."""
        n, d, vocab = super().validate(hf)
        if not any(p.is_meta for p in hf.parameters()):
            _check_forward(self, hf, n)
        name = type(hf).__name__
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(
                f"{name} has no registered adapter; the generic adapter inferred layers={self.layers!r} ({n} blocks,"
                f" hidden size {d}), final_norm={self.final_norm!r}, unembed={self.unembed!r}, image token id from"
                f" {self.image_token_id_attrs or self.image_token!r}. Register an adapter to make this explicit"
                " (docs/models.md).",
                stacklevel=2,
            )
        return n, d, vocab


def _check_forward(adapter: ModelAdapter, hf: nn.Module, n: int) -> None:
    """A 2-token text forward: every block's hooked output equals output_hidden_states[i + 1] (the last is normed)."""
    layers = cast(nn.ModuleList, resolve_module(hf, adapter.layers))  # ModelAdapter.validate checked it is one
    seen: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(
            lambda _m, _i, out, i=i: seen.setdefault(i, out[0] if isinstance(out, tuple) else out)
        )
        for i, layer in enumerate(layers)
    ]
    vocab = int(cast(torch.Tensor, resolve_module(hf, adapter.unembed).weight).shape[0])  # a 2-D weight (validated)
    embeddings = cast("PreTrainedModel", hf).get_input_embeddings()
    ids = torch.tensor([[1 % vocab, 2 % vocab]], device=cast(torch.Tensor, embeddings.weight).device)
    where = f"generic adapter on {type(hf).__name__} ({adapter.layers!r})"
    try:
        with torch.no_grad():
            out = hf(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    except Exception as exc:  # any model error: the inferred adapter cannot be trusted
        raise AdapterValidationError(f"{where}: a 2-token text forward failed: {exc}", REGISTER_HINT) from exc
    finally:
        for h in handles:
            h.remove()
    hs = getattr(out, "hidden_states", None)
    if hs is None or len(hs) != n + 1 or len(seen) != n:
        raise AdapterValidationError(
            f"{where}: the blocks or output_hidden_states did not give {n} states", REGISTER_HINT
        )
    norm = resolve_module(hf, adapter.final_norm)
    with torch.no_grad():
        for i in range(n):
            ref = hs[i + 1] if i < n - 1 else hs[n]
            got = seen[i] if i < n - 1 else norm(seen[i])
            if not torch.allclose(got.float(), ref.float(), rtol=1e-4, atol=1e-5):
                raise AdapterValidationError(
                    f"{where}: block {i}'s output differs from output_hidden_states", REGISTER_HINT
                )


def _path_of(root: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, m in root.named_modules() if m is target), None)


def _find_layers(hf: nn.Module, n_layers: int) -> str | None:
    """The dotted path of the text decoder's layer ModuleList (under get_decoder() when the model has one)."""
    get_decoder = getattr(hf, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    prefix = _path_of(hf, decoder) if isinstance(decoder, nn.Module) else None
    found = []
    for name, module in hf.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) != n_layers:
            continue
        if prefix and not name.startswith(prefix + "."):
            continue
        if any(k in part.lower() for part in name.split(".")[:-1] for k in _NOT_TEXT):
            continue
        found.append(name)
    found.sort(key=lambda p: (not p.endswith("layers"), p.count(".")))
    return found[0] if found else None


def _find_norm(hf: nn.Module, layers: str, hidden: int) -> str | None:
    """The final norm: a child of the layers' parent, by name first, else the one norm-like child of size `hidden`."""
    parent_path = layers.rsplit(".", 1)[0] if "." in layers else ""
    parent = hf.get_submodule(parent_path)
    sized = {
        name: m
        for name, m in parent.named_children()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.shape == (hidden,)
    }
    names = [n for n in _NORM_NAMES if n in sized] or [
        n for n, m in sized.items() if "norm" in type(m).__name__.lower()
    ]
    if len(names) == 0 or (len(names) > 1 and names[0] not in _NORM_NAMES):
        return None
    return f"{parent_path}.{names[0]}" if parent_path else names[0]


def _image_token(config: Any, processor: Any) -> tuple[tuple[str, ...], str | None]:
    """(config attributes holding the image-token id, the processor's image token string)."""
    attrs = tuple(a for a in _IMAGE_ATTRS if isinstance(getattr(config, a, None), int))
    token = getattr(processor, "image_token", None)
    return attrs, token if isinstance(token, str) else None


def infer_adapter(hf: nn.Module, processor: Any = None, what: str | None = None) -> GenericAdapter:
    """A `GenericAdapter` for the (possibly meta) image-text model `hf`; UnsupportedModelError if a part is missing."""
    what = what or type(hf).__name__
    tcfg = text_config_of(hf.config, "text_config")
    n, hidden = getattr(tcfg, "num_hidden_layers", None), getattr(tcfg, "hidden_size", None)
    if not isinstance(n, int) or not isinstance(hidden, int):
        raise _fail(what, "num_hidden_layers and hidden_size in its text config")
    layers = _find_layers(hf, n)
    if layers is None:
        raise _fail(what, f"a ModuleList of {n} decoder layers outside the vision tower")
    norm = _find_norm(hf, layers, hidden)
    if norm is None:
        raise _fail(what, f"a final norm of size {hidden} next to {layers!r}")
    get_head = getattr(hf, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    unembed = _path_of(hf, head) if isinstance(head, nn.Module) else None
    if not unembed:
        raise _fail(what, "the unembedding (get_output_embeddings() returned nothing)")
    attrs, token = _image_token(hf.config, processor)
    if not attrs and token is None:
        raise _fail(what, f"the image-token id (config attributes {_IMAGE_ATTRS}, processor.image_token)")
    return GenericAdapter(
        family=f"generic:{type(hf).__name__}",
        architectures=(type(hf).__name__,),
        layers=layers,
        final_norm=norm,
        unembed=unembed,
        text_config="text_config" if hasattr(hf.config, "text_config") else None,
        image_token_id_attrs=attrs,
        image_token=token,
        notes="inferred by nnshift.models.generic",
    )


def _meta_model(config: Any, what: str) -> nn.Module:
    """The image-text model of `config` built on the meta device (no weights), to read its module tree."""
    from transformers import AutoModelForImageTextToText

    try:
        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(config)
    except (ValueError, KeyError, ImportError) as exc:
        raise _fail(what, f"an image-text-to-text model class for {type(config).__name__} ({exc})") from exc


def adapter_for(
    architectures: Iterable[str], what: str = "this model", *, config: Any = None, model: nn.Module | None = None
) -> ModelAdapter:
    """The registered adapter, else (image-text configs) one inferred by the generic adapter."""
    names = list(architectures)
    try:
        return registered_adapter_for(names, what=what)
    except UnsupportedModelError:
        config = config if config is not None else getattr(model, "config", None)
        if config is None or getattr(config, "vision_config", None) is None:
            raise
    hf = model if model is not None else _meta_model(config, what)
    processor = None
    path = getattr(config, "name_or_path", "") or ""
    if path:
        from nnshift.models.processors import load_processor

        try:
            processor = load_processor(path)
        except (OSError, ValueError, ImportError, TypeError, AttributeError):
            processor = None
    return infer_adapter(hf, processor, what)
