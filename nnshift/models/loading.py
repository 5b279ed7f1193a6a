"""`load` (path, hub id, HF model or nnsight model, optional LoRA) -> `VLM`: the nnsight model plus its adapter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from nnshift.data import Sample
from nnshift.errors import (
    AdapterValidationError,
    EmptyInputError,
    HiddenSizeMismatchError,
    LayerOutOfRangeError,
    NnshiftError,
    UnsupportedModelError,
)
from nnshift.models.adapter import ModelAdapter, resolve_module
from nnshift.models.building import (
    DTypeLike,
    build_nnsight,
    load_hf,
    nnsight_class,
    quiet_loading,
    torch_dtype,
    unwrap_peft,
)
from nnshift.models.building import architectures_of as _architectures_of
from nnshift.models.generic import adapter_for  # the registry's, else the generic adapter for image-text models
from nnshift.models.load_checks import check_device, check_model_folder, read_config
from nnshift.models.lora import LoraRequest, LoraSwitch, check_lora_shapes, meta_model
from nnshift.models.processors import processor_with, render_chat
from nnshift.models.registry import REGISTER_HINT

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["VLM", "load", "DTypeLike"]

_torch_dtype = torch_dtype  # the old private name (tests import it)


def load(
    model: str | Path | nn.Module | Any,
    lora: str | Path | None = None,
    *,
    dtype: DTypeLike = "auto",
    device_map: str | dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    merge: bool = False,
    tokenizer: Any = None,
    processor: Any = None,
    adapter: ModelAdapter | None = None,
    dispatch: bool = True,
    verbose: bool = False,
    processor_options: dict[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> VLM:
    """Load a supported model (hub id, folder, HF model object or nnsight model) as a `VLM`.

    ``lora`` injects a PEFT adapter in place, exactly as ``PeftModel.from_pretrained`` loads it (module paths
    unchanged; toggle with ``vlm.lora_enabled`` / ``vlm.lora_disabled()``); ``merge=True`` merges it into the
    weights instead. ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``) is a shorthand for ``device_map``. ``adapter``
    overrides the registry lookup. ``dispatch=False`` (hub id or folder only) builds nnsight's weightless meta
    model, for remote execution on NDIF; the weights load on the first local trace. ``verbose`` shows
    transformers' weight-loading progress bars. Paths, configs, weights, the adapter and the device are checked
    before any weights are read. ``processor_options`` go to the processor's ``from_pretrained`` (e.g. Qwen2-VL's
    ``{"min_pixels": ..., "max_pixels": ...}``), so they are part of the processor settings a store records.
    """
    from nnsight.intervention.envoy import Envoy

    if isinstance(model, VLM):
        if lora is not None:
            raise NnshiftError("lora= cannot be applied to an already-loaded VLM", "call ns.load(path, lora=...)")
        return model
    if device is not None:
        if device_map is not None:
            raise NnshiftError("both device= and device_map= given", "pass one of them")
        device_map = str(device)
    check_device(device_map)
    dtype_value = torch_dtype(dtype)
    load_kwargs: dict[str, Any] = dict(from_pretrained_kwargs)
    if dtype_value is not None:
        load_kwargs["dtype"] = dtype_value
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    if not isinstance(model, (Envoy, nn.Module, str, Path)):
        raise UnsupportedModelError(
            f"ns.load got a {type(model).__name__}", "pass a hub id, a folder, a transformers model or an nnsight model"
        )
    if isinstance(model, (str, Path)):
        check_model_folder(str(model), need_weights=dispatch)
    if processor_options:
        processor = processor_with(model, processor, processor_options)
    lora_req = LoraRequest(lora, merge)
    with quiet_loading(verbose):
        if isinstance(model, Envoy):
            return _load_envoy(model, lora_req, adapter)
        if isinstance(model, nn.Module):
            return _load_module(model, lora_req, adapter, dtype_value, tokenizer, processor)
        return _load_path(str(model), lora_req, adapter, load_kwargs, tokenizer, processor, dispatch)


def _load_envoy(model: Any, lora: LoraRequest, adapter: ModelAdapter | None) -> VLM:
    """An nnsight model given as is (the adapter, if any, injected into its module)."""
    hf = model._module
    ad = adapter or adapter_for(_architectures_of(hf), what=type(hf).__name__, model=hf)
    name = str(getattr(model, "repo_id", None) or getattr(hf.config, "name_or_path", "") or type(hf).__name__)
    if lora.path is not None:
        if lora.merge:
            raise NnshiftError(
                "merge=True needs the HF model, not an nnsight model", "pass the folder or the HF model to ns.load"
            )
        lora.apply(hf, name)
        model._update(model._module)  # rebuild the envoy tree over the injected layers
        model.peft = lora.path
    return VLM(model, ad, name=name, lora=lora.path)


def _load_module(
    model: nn.Module, lora: LoraRequest, adapter: ModelAdapter | None, dtype: Any, tokenizer: Any, processor: Any
) -> VLM:
    """A transformers model object (a PeftModel is unwrapped, its LoRA layers kept)."""
    hf = unwrap_peft(model)
    ad = adapter or adapter_for(_architectures_of(hf), what=type(hf).__name__, model=hf)
    if isinstance(dtype, torch.dtype):
        hf = hf.to(dtype)
    name = str(getattr(hf.config, "name_or_path", "") or type(hf).__name__)
    hf = lora.apply(hf, name)
    if ad.multimodal and processor is None:
        if not Path(name).is_dir():
            raise NnshiftError(
                f"{type(hf).__name__} given as an object with no processor and no local folder to load one from",
                "pass processor=AutoProcessor.from_pretrained(...) to ns.load",
            )
        from nnshift.models.processors import load_processor

        processor = load_processor(name)
    source = getattr(hf.config, "name_or_path", "") or None
    nn_model = build_nnsight(
        nnsight_class(ad), hf, source_name=source, task=ad.task, tokenizer=tokenizer, processor=processor
    )
    if lora.path is not None and not lora.merge:
        nn_model.peft = lora.path
    return VLM(nn_model, ad, name=name, lora=lora.path, merged=lora.merge)


def _load_path(
    name: str,
    lora: LoraRequest,
    adapter: ModelAdapter | None,
    load_kwargs: dict[str, Any],
    tokenizer: Any,
    processor: Any,
    dispatch: bool,
) -> VLM:
    """A hub id or a local folder (checked already)."""
    config = read_config(name, load_kwargs)
    ad = adapter or adapter_for(
        list(getattr(config, "architectures", None) or [type(config).__name__]), what=name, config=config
    )
    if lora.folder is not None:
        check_lora_shapes(meta_model(config, ad.task), lora.folder, lora.config, name)
        lora.shapes_checked = True
    cls = nnsight_class(ad)
    if ad.multimodal and processor is None:
        from nnshift.models.processors import load_processor

        processor = load_processor(name)
    pre = {"tokenizer": tokenizer, "processor": processor}
    if lora.path is not None and (dispatch or lora.merge):
        hf = lora.apply(load_hf(name, ad.task, **load_kwargs), name)
        nn_model = build_nnsight(cls, hf, source_name=name, task=ad.task, **pre)
        if not lora.merge:
            nn_model.peft = lora.path
    else:
        nn_model = build_nnsight(
            cls, name, source_name=name, task=ad.task, dispatch=dispatch, peft=lora.path, **pre, **load_kwargs
        )
    return VLM(nn_model, ad, name=name, lora=lora.path, merged=lora.merge)


class VLM(LoraSwitch):
    """A loaded model: the nnsight model (`model`), the HF module (`hf`) and the `adapter` that knows its layout."""

    def __init__(
        self, model: Any, adapter: ModelAdapter, *, name: str, lora: str | None = None, merged: bool = False
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.name = name
        self.lora = lora
        self.lora_merged = merged
        self.n_layers, self.hidden_size, self.vocab_size = adapter.validate(self.hf)
        self.is_multimodal: bool = adapter.multimodal
        self.processor: Any = getattr(model, "processor", None) if adapter.multimodal else None
        if adapter.multimodal and self.processor is None:
            raise AdapterValidationError(
                f"{name}: no processor was loaded for the multimodal model {type(self.hf).__name__}",
                "save the processor next to the model (processor.save_pretrained) or pass processor= to ns.load",
            )
        tok = getattr(model, "tokenizer", None) or getattr(self.processor, "tokenizer", None)
        if tok is None:
            raise AdapterValidationError(f"{name}: no tokenizer was loaded", "pass tokenizer= to ns.load")
        self.tokenizer = tok
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        tok.padding_side = "left"
        self._text_config = adapter.text_config_of(self.hf.config)
        self._image_token_id = adapter.image_token_id(self.hf.config, tok)
        if adapter.multimodal and self._image_token_id is None:
            raise AdapterValidationError(
                f"{name}: cannot find the image token id (config {adapter.image_token_id_attrs}, token"
                f" {adapter.image_token!r})",
                "set image_token_id_attrs / image_token in the adapter",
            )
        self._layers_envoy = self._envoy_at(adapter.layers)
        self._tuple_output = self._detect_tuple_output()

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        """Short description: name, architecture, layers, hidden size."""
        lora = f", lora={self.lora!r}" if self.lora else ""
        return (
            f"VLM({self.name!r}, {type(self.hf).__name__}, family={self.adapter.family!r}, "
            f"n_layers={self.n_layers}, hidden_size={self.hidden_size}{lora})"
        )

    @property
    def hf(self) -> nn.Module:
        """The underlying torch module (re-read each time: nnsight swaps it in when a lazy model dispatches)."""
        return self.model._module

    @property
    def _pretrained(self) -> PreTrainedModel:
        """`hf` typed as the transformers model it is (its HF methods and properties)."""
        return cast("PreTrainedModel", self.hf)

    @property
    def _layer_modules(self) -> nn.ModuleList:
        """The decoder-layer ModuleList of the language model."""
        return cast(nn.ModuleList, resolve_module(self.hf, self.adapter.layers))  # checked by adapter.validate

    @property
    def _norm(self) -> nn.Module:
        """The final norm."""
        return resolve_module(self.hf, self.adapter.final_norm)

    @property
    def _unembed(self) -> nn.Module:
        """The unembedding (lm_head)."""
        return resolve_module(self.hf, self.adapter.unembed)

    @property
    def is_meta(self) -> bool:
        """Whether the weights are not loaded (a lazy nnsight model, e.g. for remote execution on NDIF)."""
        return any(p.is_meta for p in self.hf.parameters())

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embedding (CPU for a model whose weights are not loaded)."""
        emb = self._pretrained.get_input_embeddings()
        device = cast(Tensor, emb.weight).device if emb is not None else next(self.hf.parameters()).device
        return torch.device("cpu") if device.type == "meta" else device

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating dtype."""
        return self._pretrained.dtype

    @property
    def pad_token_id(self) -> int:
        """The padding token id."""
        return int(self.tokenizer.pad_token_id)

    @property
    def image_token_id(self) -> int | None:
        """The id of the image placeholder token (None for text-only models)."""
        return self._image_token_id

    @property
    def eos_token_ids(self) -> list[int]:
        """End-of-answer token ids: the tokenizer's eos, the generation config's, and template end-of-turn tokens."""
        ids: list[int] = []
        candidates: list[Any] = [self.tokenizer.eos_token_id]
        gen = getattr(self.hf, "generation_config", None)
        g_eos = getattr(gen, "eos_token_id", None)
        candidates += list(g_eos) if isinstance(g_eos, (list, tuple)) else [g_eos]
        unk = self.tokenizer.unk_token_id
        for token in self.adapter.end_of_turn_tokens:
            if token in self.tokenizer.get_vocab():
                tid = self.tokenizer.convert_tokens_to_ids(token)
                if tid != unk:
                    candidates.append(tid)
        for tid in candidates:
            if isinstance(tid, int) and tid >= 0 and tid not in ids:
                ids.append(tid)
        return ids

    # ------------------------------------------------------------------ layers
    def _envoy_at(self, path: str) -> Any:
        """The nnsight Envoy at a dotted HF module path."""
        env = self.model
        for part in path.split("."):
            env = env[int(part)] if part.isdigit() else getattr(env, part)
        return env

    def _detect_tuple_output(self) -> bool:
        """Whether decoder blocks return a tuple (hidden, ...) rather than a tensor; adapter or a 1-token probe."""
        if self.adapter.block_output != "auto":
            return self.adapter.block_output == "tuple"
        if self.is_meta:
            # no weights to run: transformers 5.x decoder blocks return a plain tensor
            return False
        seen: list[bool] = []

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            seen.append(isinstance(out, (tuple, list)))

        tid = self.tokenizer.bos_token_id
        if tid is None:
            tid = self.pad_token_id
        handle = self._layer_modules[0].register_forward_hook(hook)
        try:
            with torch.no_grad():
                ids = torch.tensor([[tid, tid]], device=self.device)
                self.hf(input_ids=ids, attention_mask=torch.ones_like(ids))
        except Exception as exc:
            raise AdapterValidationError(
                f"{self.name}: a 2-token text forward to probe the decoder-block output failed: {exc}",
                "set block_output='tensor' or 'tuple' in the adapter",
            ) from exc
        finally:
            handle.remove()
        if not seen:
            raise AdapterValidationError(
                f"{self.name}: decoder layer 0 at {self.adapter.layers!r} did not run in a forward", REGISTER_HINT
            )
        return seen[0]

    def layer_index(self, i: int) -> int:
        """Normalise a decoder-layer index (negative counts from the end); LayerOutOfRangeError otherwise."""
        if isinstance(i, bool) or not isinstance(i, int):
            try:
                i = int(i)  # numpy / torch integers
            except (TypeError, ValueError) as exc:
                raise TypeError(f"layer index must be an int, got {type(i).__name__}") from exc
        n = self.n_layers
        if -n <= i < n:
            return i % n
        raise LayerOutOfRangeError(
            f"layer {i} is out of range: {self.name} has {n} decoder layers, valid indices are -{n}..{n - 1}",
            "layers count the language model's decoder blocks only (never the vision tower); -1 is the last",
        )

    def layer(self, i: int) -> Any:
        """The nnsight Envoy of language-model decoder block `i`."""
        return self._layers_envoy[self.layer_index(i)]

    def layer_module(self, i: int) -> nn.Module:
        """The torch module of language-model decoder block `i` (for plain hooks)."""
        return self._layer_modules[self.layer_index(i)]

    @property
    def block_returns_tuple(self) -> bool:
        """Whether the decoder block's output is a tuple whose first element is the residual stream."""
        return self._tuple_output

    def get_resid(self, i: int) -> Any:
        """Inside an nnsight trace: the residual stream [batch, seq, hidden] after decoder block `i`."""
        out = self.layer(i).output
        return out[0] if self._tuple_output else out

    def set_resid(self, i: int, value: Any) -> None:
        """Inside an nnsight trace: replace the residual stream after block `i` (other tuple items kept)."""
        env = self.layer(i)
        if self._tuple_output:
            env.output = (value, *env.output[1:])
        else:
            env.output = value

    # ------------------------------------------------------------------ prompts
    def _render(self, prompt: str, has_image: bool, add_generation_prompt: bool) -> str:
        """The prompt text with the chat template applied (or the plain prompt when there is none)."""
        messages = self.adapter.messages(prompt, has_image)
        owner = self.processor if self.is_multimodal else self.tokenizer
        if getattr(owner, "chat_template", None) is None:
            return prompt
        return render_chat(owner, self.tokenizer, messages, add_generation_prompt)

    def _add_special(self, texts: list[str]) -> bool:
        """Whether the tokenizer should add its special tokens (not when the template already put the BOS)."""
        bos = self.tokenizer.bos_token
        return not (bos and all(t.startswith(bos) for t in texts))

    def prepare(self, samples: Sequence[Sample], add_generation_prompt: bool = True) -> dict[str, Tensor]:
        """Model inputs for `samples` (chat template + processor, left padding) on `device`."""
        if len(samples) == 0:
            raise EmptyInputError("prepare() got no samples", "pass at least one Sample")
        images = [s.load_image() for s in samples]
        if self.is_multimodal and self.adapter.prompt_style == "prefix":
            return self._prepare_prefix(samples, images)
        texts = [
            self._render(s.prompt, im is not None, add_generation_prompt) for s, im in zip(samples, images, strict=True)
        ]
        self.tokenizer.padding_side = "left"
        common = {"padding": True, "return_tensors": "pt", "add_special_tokens": self._add_special(texts)}
        if self.is_multimodal:
            if self.adapter.nested_images:
                img_arg: Any = [[im] if im is not None else [] for im in images]
            else:
                img_arg = [im for im in images if im is not None]
            if not any(im is not None for im in images):
                img_arg = None
            enc = self.processor(text=texts, images=img_arg, **common)
        else:
            enc = self.tokenizer(texts, **common)
        return self._to_device(enc)

    def _prepare_prefix(self, samples: Sequence[Sample], images: list[Any]) -> dict[str, Tensor]:
        """PaliGemma-style: the processor itself puts the image tokens and BOS before the prompt."""
        has = [im is not None for im in images]
        if any(has) and not all(has):
            raise NnshiftError(
                f"{self.adapter.family}: a batch mixes samples with and without images",
                "prepare image and text-only samples in separate batches",
            )
        self.tokenizer.padding_side = "left"
        marker = self.adapter.image_token or ""
        texts = [marker + s.prompt for s in samples]  # the processor expands the marker and adds BOS
        if all(has):
            enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        else:
            bos = self.tokenizer.bos_token or ""
            enc = self.tokenizer(
                [bos + s.prompt + "\n" for s in samples], padding=True, return_tensors="pt", add_special_tokens=False
            )
        return self._to_device(enc)

    def _to_device(self, enc: Any) -> dict[str, Tensor]:
        """Tensors of an encoding on the model's device, floating ones in the model's dtype."""
        out: dict[str, Tensor] = {}
        for key, value in dict(enc).items():
            if not isinstance(value, Tensor) or key == "labels":  # PaliGemma's processor adds training labels
                continue
            if value.is_floating_point():
                out[key] = value.to(device=self.device, dtype=self.dtype)
            else:
                out[key] = value.to(self.device)
        return out

    def image_token_mask(self, input_ids: Int[Tensor, "b s"]) -> Bool[Tensor, "b s"]:
        """True at image placeholder tokens (all False for text-only models)."""
        if self._image_token_id is None:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return input_ids == self._image_token_id

    # ------------------------------------------------------------------ readout
    def logit_lens(self, h: Float[Tensor, "k d"]) -> Float[Tensor, "k v"]:
        """Final norm then unembedding of residual vectors (plain torch, no grad), as float32 logits."""
        if h.shape[-1] != self.hidden_size:
            raise HiddenSizeMismatchError(
                f"logit_lens got vectors of size {h.shape[-1]}, {self.name} has hidden size {self.hidden_size}",
                "use activations captured from this model",
            )
        w = cast(Tensor, self._unembed.weight)  # adapter.validate checked it is a 2-D tensor
        norm_w = next(self._norm.parameters(), w)
        with torch.no_grad():
            x = self._norm(h.to(device=norm_w.device, dtype=norm_w.dtype))
            logits = self._unembed(x.to(device=w.device, dtype=w.dtype)).float()
            cap = getattr(self._text_config, "final_logit_softcapping", None)
            if cap:
                logits = torch.tanh(logits / cap) * cap
        return logits

    def decode(self, ids: Int[Tensor, ...] | Sequence[int]) -> str:
        """Token ids -> text, special tokens skipped, whitespace stripped."""
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()
