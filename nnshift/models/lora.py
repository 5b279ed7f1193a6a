"""LoRA adapters as they come: checked against the base model's shapes, then loaded exactly as PEFT loads them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import struct
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from nnshift.errors import NnshiftError
from nnshift.models.load_checks import LoraAdapterError, check_lora_folder

if TYPE_CHECKING:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper
    from transformers import PreTrainedModel

__all__ = [
    "LoraRequest",
    "LoraSwitch",
    "check_lora_shapes",
    "attach_lora",
    "detach_lora",
    "meta_model",
    "tuner_layers",
]

_log = logging.getLogger("nnshift")
_PREFIX = "base_model.model."


def meta_model(config: Any, task: str) -> nn.Module:
    """The model of `config` built on the meta device (no weights read or allocated): module names and shapes."""
    from transformers.pipelines import check_task

    auto = check_task(task)[1]["pt"][0]
    with torch.device("meta"):
        return auto.from_config(config)


def _adapter_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of adapter_model.safetensors, read from its header only ({} for a .bin adapter)."""
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def check_lora_shapes(model: nn.Module, folder: Path, config: dict[str, Any], model_name: str) -> None:
    """Refuse an adapter whose LoRA matrices do not fit the base model's layers of the same name."""
    modules = dict(model.named_modules())
    bad: list[str] = []
    for key, shape in _adapter_shapes(folder).items():
        for part, dim in ((".lora_A.weight", 1), (".lora_B.weight", 0)):
            if not key.endswith(part) or len(shape) != 2:
                continue
            path = key.removeprefix(_PREFIX).removesuffix(part)
            layer = modules.get(path)
            if not isinstance(layer, nn.Linear):
                continue  # an older key layout: PEFT renames it while loading, the landing check covers it
            want = layer.in_features if dim == 1 else layer.out_features
            if shape[dim] != want:
                side = "input" if dim == 1 else "output"
                bad.append(f"{path}: adapter {side} size {shape[dim]}, model {want}")
    if bad:
        made_for = config.get("base_model_name_or_path") or "another model"
        raise LoraAdapterError(
            f"the LoRA adapter {folder} was made for {made_for}, not for {model_name}: {len(bad)} layer(s) differ in"
            f" size, e.g. {bad[0]}",
            "load the adapter on the base model it was trained from (base_model_name_or_path in adapter_config.json)",
        )


def tuner_layers(model: nn.Module) -> list[BaseTunerLayer | AuxiliaryTrainingWrapper]:
    """The injected PEFT layers: LoRA layers and `modules_to_save` copies (both switch with enable_adapters)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


def _fingerprint(t: Tensor, dtype: torch.dtype) -> tuple[tuple[int, ...], str]:
    """Shape and a hash of the values of `t` cast to `dtype`."""
    data = t.detach().to(device="cpu", dtype=dtype).float().contiguous().numpy().tobytes()
    return tuple(t.shape), hashlib.sha1(data).hexdigest()


def _unplaced(peft_model: Any, lora: str) -> tuple[list[str], int]:
    """The saved adapter tensors whose values are found nowhere in the loaded adapter (by value: any key layout)."""
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    saved = load_peft_weights(lora, device="cpu")
    # embedding layers are compared only when the file holds some (PEFT's "auto" would look them up on the hub)
    embeddings = any(".lora_" not in key for key in saved)
    loaded = get_peft_model_state_dict(peft_model, save_embedding_layers=embeddings)
    dtypes = {t.dtype for t in loaded.values()}
    have = Counter(_fingerprint(t, t.dtype) for t in loaded.values())
    unplaced: list[str] = []
    for key, t in saved.items():
        for fp in {_fingerprint(t, d) for d in dtypes}:
            if have[fp] > 0:
                have[fp] -= 1
                break
        else:
            unplaced.append(key)
    return unplaced, len(saved)


def _peft_from_pretrained(hf: nn.Module, lora: str, name: str) -> Any:
    """`PeftModel.from_pretrained`, its errors turned into LoraAdapterError and its missing-keys warning logged."""
    from peft import PeftModel

    hint = "load the adapter on the base model it was trained from (base_model_name_or_path in adapter_config.json)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            peft_model = PeftModel.from_pretrained(hf, lora)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise LoraAdapterError(f"PEFT cannot load the LoRA adapter {lora} on {name}: {exc}", hint) from exc
    for w in caught:
        if "Found missing adapter keys" in str(w.message):
            # target_modules also matched layers the adapter has no weights for (e.g. the vision tower's q_proj):
            # PEFT leaves them at lora_B = 0, i.e. unchanged, and so does nnshift
            _log.info("LoRA %s: some targeted layers have no saved weights and stay unchanged (as in PEFT)", lora)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return peft_model


def detach_lora(model: nn.Module) -> None:
    """Put back the modules PEFT wrapped (LoRA layers and `modules_to_save` copies), in place."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, child_name, child.get_base_layer())
            elif isinstance(child, AuxiliaryTrainingWrapper):
                setattr(parent, child_name, child.original_module)
    if hasattr(model, "peft_config"):
        del model.peft_config


_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<tail>lora_\w+(?:\.\w+)?)$")


def _module_of(key: str) -> tuple[str, str | None]:
    """(module path, LoRA tail) of a saved key without the PEFT prefix; tail None for a full weight (modules_to_save)."""
    m = _LORA_KEY.match(key)
    return (m["module"], m["tail"]) if m else (key.rsplit(".", 1)[0], None)


def _renamed_keys(hf: nn.Module, keys: list[str]) -> dict[str, str] | None:
    """Old-layout adapter keys -> this model's names, by transformers' own checkpoint renaming; None if not needed.

    PEFT renames older LoRA keys for some families only and never `modules_to_save` weights (a KeyError), so an
    adapter trained before transformers moved the language model under ``model.language_model`` is renamed here
    with the rules transformers uses to load such a checkpoint's own weights.
    """
    modules = {n for n, _ in hf.named_modules()}
    stripped = {k: k.removeprefix(_PREFIX) for k in keys}
    if all(_module_of(s)[0] in modules for s in stripped.values()):
        return None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # pragma: no cover - transformers without weight renaming
        return None
    model = cast("PreTrainedModel", hf)  # a transformers model: it has a conversion mapping and a base_model_prefix
    conv = get_model_conversion_mapping(model)
    renamings = [c for c in conv if isinstance(c, WeightRenaming)]
    converters = [c for c in conv if isinstance(c, WeightConverter)]
    params = dict(hf.state_dict())
    out: dict[str, str] = {}
    for key, short in stripped.items():
        module, tail = _module_of(short)
        source = f"{module}.weight" if tail is not None else short
        target = rename_source_key(source, renamings, converters, model.base_model_prefix, params)[0]
        new = f"{target.removesuffix('.weight')}.{tail}" if tail is not None else target
        if _module_of(new)[0] not in modules:
            return None  # renaming does not explain this adapter: let PEFT and the landing check speak
        out[key] = (_PREFIX if key.startswith(_PREFIX) else "") + new
    return out if any(k != v for k, v in out.items()) else None


@contextlib.contextmanager
def _in_model_layout(hf: nn.Module, lora: str) -> Iterator[str]:
    """The adapter folder, or a temporary copy whose weight names are renamed to `hf`'s layout."""
    folder = Path(lora)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        yield lora
        return
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    renamed = _renamed_keys(hf, list(state))
    if renamed is None:
        yield lora
        return
    _log.info("LoRA %s: weight names renamed from an older transformers layout", lora)
    with tempfile.TemporaryDirectory(prefix="nnshift-lora-") as tmp:
        shutil.copy(folder / "adapter_config.json", Path(tmp) / "adapter_config.json")
        save_file({renamed[k]: v for k, v in state.items()}, Path(tmp) / weights.name, metadata={"format": "pt"})
        yield tmp


def attach_lora(hf: nn.Module, lora: str, *, name: str) -> Any:
    """Inject the adapter into `hf` in place with `PeftModel.from_pretrained` (returned); refuse weights that miss."""
    with _in_model_layout(hf, lora) as source:
        peft_model = _peft_from_pretrained(hf, source, name)
        unplaced, total = _unplaced(peft_model, source)
    if unplaced:
        detach_lora(hf)  # the model must not stay half-adapted
        what = "none" if len(unplaced) == total else f"{total - len(unplaced)} of {total}"
        raise LoraAdapterError(
            f"the LoRA adapter {lora} does not fit {name}: {what} of its weights found a place in the model"
            f" (e.g. {unplaced[0]}), so it would silently run as {'the base model' if what == 'none' else 'a part'}",
            "load the adapter on the base model it was trained from (base_model_name_or_path in adapter_config.json)",
        )
    return peft_model


class LoraRequest:
    """The LoRA request of one `load` call: path, checked folder and config, merge or not."""

    def __init__(self, lora: str | Path | None, merge: bool) -> None:
        self.path = None if lora is None else str(lora)
        self.merge = merge and self.path is not None
        self.folder, self.config = (None, {}) if self.path is None else check_lora_folder(self.path)
        self.shapes_checked = False

    def apply(self, hf: nn.Module, name: str) -> nn.Module:
        """`hf` with the adapter injected in place (or merged into its weights), after a shape check."""
        if self.path is None:
            return hf
        if self.folder is not None and not self.shapes_checked:
            check_lora_shapes(hf, self.folder, self.config, name)
        peft_model = attach_lora(hf, self.path, name=name)
        return peft_model.merge_and_unload() if self.merge else hf


class LoraSwitch:
    """The LoRA on/off switch of a loaded model (mixed into `VLM`, which sets `hf`, `name` and `lora_merged`)."""

    name: str
    lora_merged: bool

    @property
    def hf(self) -> nn.Module:
        """The HF module the LoRA layers are injected in (provided by the class that mixes this in)."""
        raise NotImplementedError

    def _lora_layers(self) -> list[BaseTunerLayer | AuxiliaryTrainingWrapper]:
        """The injected PEFT layers (LoRA layers and `modules_to_save` copies)."""
        return tuner_layers(self.hf)

    @property
    def lora_enabled(self) -> bool:
        """Whether a LoRA adapter is injected and active."""
        layers = self._lora_layers()
        return bool(layers) and any(not m.disable_adapters for m in layers)

    @lora_enabled.setter
    def lora_enabled(self, value: bool) -> None:
        layers = self._lora_layers()
        if not layers:
            merged = " (it was merged into the weights)" if self.lora_merged else ""
            raise NnshiftError(
                f"{self.name} has no LoRA adapter to switch{merged}",
                "load with ns.load(base, lora=adapter_dir) and merge=False",
            )
        for m in layers:
            m.enable_adapters(bool(value))

    @contextlib.contextmanager
    def lora_disabled(self) -> Iterator[Any]:
        """Run the same weights as the base model inside the block (adapter switched off, then restored)."""
        previous = self.lora_enabled
        self.lora_enabled = False
        try:
            yield self
        finally:
            self.lora_enabled = previous
