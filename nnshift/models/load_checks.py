"""What `ns.load` checks before any heavy work: the model folder, its config and weights, the LoRA folder, the device."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from nnshift.errors import (
    DeviceError,
    LoraAdapterError,
    ModelConfigError,
    ModelLoadError,
    ModelNotFoundError,
    ModelWeightsError,
)

__all__ = [
    "DeviceError",
    "LoraAdapterError",
    "ModelConfigError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelWeightsError",
    "check_device",
    "check_lora_folder",
    "check_model_folder",
    "looks_local",
    "read_config",
]


_HUB_HINT = "a hub id looks like 'org/name'; a local folder must exist (check the path and the working directory)"
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth", "*.gguf")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def looks_local(name: str) -> bool:
    """Whether `name` is meant as a local path rather than a hub id (absolute, ./ ../ ~, or an existing parent)."""
    if name in (".", "..") or name.startswith(("./", "../", "~", ".\\", "..\\")) or "\\" in name:
        return True
    path = Path(name)
    if path.is_absolute() or name.endswith("/") or name.count("/") > 1:
        return True
    parent = path.parent
    return str(parent) not in ("", ".") and parent.exists()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or ModelConfigError saying where it is broken."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelConfigError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            f"repair or rewrite the {what} (save_pretrained writes it)",
        ) from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}", f"repair or rewrite the {what}") from exc
    if not isinstance(data, dict):
        raise ModelConfigError(
            f"{path} holds a JSON {type(data).__name__}, not an object", f"rewrite the {what} with save_pretrained"
        )
    return data


def _existing_folder(name: str, what: str) -> Path | None:
    """The folder `name` if it exists; None for a hub id; ModelNotFoundError for a missing local path."""
    path = Path(name).expanduser()
    if not path.exists():
        if looks_local(name):
            raise ModelNotFoundError(f"no such folder: {name} (the {what} folder does not exist)", _HUB_HINT)
        return None
    if not path.is_dir():
        raise ModelLoadError(
            f"{name} is a file, not a {what} folder", f"pass the folder that save_pretrained wrote the {what} to"
        )
    if not any(path.iterdir()):
        raise ModelLoadError(f"the {what} folder {name} is empty", f"save the {what} there with save_pretrained")
    return path


def _check_safetensors(path: Path) -> None:
    """A .safetensors file whose header is readable and whose size matches it (catches truncated downloads)."""
    size = path.stat().st_size
    hint = "the file is truncated or corrupt: download or save it again"
    if size < 8:
        raise ModelWeightsError(f"{path} is {size} bytes long, too short for a safetensors file", hint)
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise ModelWeightsError(f"{path}: its header says {n} bytes, the file has {size - 8}", hint)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelWeightsError(f"{path}: unreadable safetensors header ({exc})", hint) from exc
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + n + max(ends, default=0) > size:
        raise ModelWeightsError(f"{path}: the tensors need {8 + n + max(ends)} bytes, the file has {size}", hint)


def _check_weights(folder: Path, name: str) -> None:
    """The model's weight files exist (every shard an index names) and safetensors files are complete."""
    for index_name in _INDEXES:
        index = folder / index_name
        if index.is_file():
            weight_map = _read_json(index, "weight index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelWeightsError(f"{index} has no weight_map", "save the model again with save_pretrained")
            missing = sorted({str(s) for s in weight_map.values() if not (folder / str(s)).is_file()})
            if missing:
                raise ModelWeightsError(
                    f"{name}: {len(missing)} weight shard(s) named in {index_name} are missing: {missing[:3]}",
                    "download or copy every shard of the checkpoint into the folder",
                )
    files = [p for glob in _WEIGHT_GLOBS for p in folder.glob(glob)]
    if not files:
        raise ModelWeightsError(
            f"{name} has a config.json but no weights (no *.safetensors or pytorch_model*.bin)",
            "copy the weight files next to config.json, or pass dispatch=False for a weightless model",
        )
    for p in files:
        if p.suffix == ".safetensors":
            _check_safetensors(p)


def _config_path(
    folder: Path, name: str, files: tuple[str, str], error: type[ModelLoadError], mixup: tuple[str, str], hint: str
) -> Path:
    """``folder / files[0]``; a folder with ``files[1]`` instead is the other kind (``mixup``: what it is, hint)."""
    want, other = files
    if (folder / want).is_file():
        return folder / want
    if (folder / other).is_file():
        raise error(f"{name} is {mixup[0]} ({other}, no {want})", mixup[1])
    raise error(f"{name} has no {want}", hint)


def check_model_folder(name: str, *, need_weights: bool = True) -> Path | None:
    """Validate a local model folder (config.json, weights); None when `name` is a hub id."""
    folder = _existing_folder(name, "model")
    if folder is None:
        return None
    config_path = _config_path(
        folder,
        name,
        ("config.json", "adapter_config.json"),
        ModelConfigError,
        (
            "a LoRA adapter folder, not a model folder",
            "load it on its base model: ns.load(base_model, lora=" + repr(name) + ")",
        ),
        "point to the folder save_pretrained wrote the model to",
    )
    config = _read_json(config_path, "config.json")
    if not isinstance(config.get("model_type"), str):
        raise ModelConfigError(
            f"{config_path} has no model_type: it is not a transformers model config",
            "rewrite it with model.config.save_pretrained(folder)",
        )
    if need_weights:
        _check_weights(folder, name)
    return folder


def check_lora_folder(lora: str) -> tuple[Path | None, dict[str, Any]]:
    """Validate a local LoRA folder (adapter_config.json, adapter weights); (None, {}) for a hub adapter id."""
    folder = _existing_folder(lora, "LoRA adapter")
    if folder is None:
        return None, {}
    config_path = _config_path(
        folder,
        lora,
        ("adapter_config.json", "config.json"),
        LoraAdapterError,
        ("a full model folder, not a LoRA adapter", "load it as the model: ns.load(" + repr(lora) + ")"),
        "save the adapter with peft_model.save_pretrained",
    )
    config = _read_json(config_path, "adapter_config.json")
    if not isinstance(config.get("peft_type"), str):
        raise ModelConfigError(f"{config_path} has no peft_type", "rewrite it with peft_model.save_pretrained")
    weights = [folder / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (folder / n).is_file()]
    if not weights:
        raise ModelWeightsError(
            f"the LoRA folder {lora} has no adapter_model.safetensors or adapter_model.bin",
            "copy the adapter weights next to adapter_config.json",
        )
    if weights[0].suffix == ".safetensors":
        _check_safetensors(weights[0])
    return folder, config


def _device_ok(value: Any) -> tuple[bool, str]:
    """Whether one device_map value exists on this machine, and its name."""
    if isinstance(value, bool):
        return False, repr(value)
    if isinstance(value, int):
        return torch.cuda.is_available() and 0 <= value < torch.cuda.device_count(), f"cuda:{value}"
    text = str(value)
    if text in ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "disk", "meta"):
        return True, text
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        return False, text
    if dev.type == "cuda":
        index = dev.index or 0
        return torch.cuda.is_available() and index < torch.cuda.device_count(), text
    if dev.type == "mps":
        return bool(torch.backends.mps.is_available()), text
    available = getattr(getattr(torch, dev.type, None), "is_available", None)
    return (dev.type == "cpu" or (callable(available) and bool(available()))), text


def check_device(device_map: Any) -> None:
    """Refuse a device (or device_map value) this machine does not have, before any weights are read."""
    if device_map is None:
        return
    values = list(device_map.values()) if isinstance(device_map, dict) else [device_map]
    for value in values:
        ok, text = _device_ok(value)
        if not ok:
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise DeviceError(
                f"device {text!r} is not available on this machine ({gpus} CUDA GPU(s) visible)",
                'use device="cpu", or "auto" to place the model on whatever this machine has',
            )


def read_config(name: str, load_kwargs: dict[str, Any]) -> Any:
    """`AutoConfig.from_pretrained`, its failures turned into clear errors."""
    from transformers import AutoConfig

    keys = ("trust_remote_code", "revision", "token", "cache_dir", "local_files_only")
    try:
        return AutoConfig.from_pretrained(name, **{k: load_kwargs[k] for k in keys if k in load_kwargs})
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot find {name}: no such local folder, and the hub did not give it ({exc})",
            "check the folder path, or the hub id, network access and HF_TOKEN for gated models",
        ) from exc
    except (ValueError, KeyError) as exc:
        raise ModelConfigError(
            f"the config of {name} cannot be read by transformers: {exc}",
            "check config.json (model_type) and that the installed transformers knows this architecture",
        ) from exc
