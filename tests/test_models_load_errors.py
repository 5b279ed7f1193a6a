"""`ns.load` refuses bad paths, configs, weights, adapters and devices with clear errors, before any weights load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import nnshift.models.loading as loading
from nnshift.errors import NnshiftError
from nnshift.models import load
from nnshift.models.load_checks import (
    DeviceError,
    LoraAdapterError,
    ModelConfigError,
    ModelLoadError,
    ModelNotFoundError,
    ModelWeightsError,
    looks_local,
)
from nnshift.models.testing import build_tiny, save_tiny_lora


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("llama", tmp_path_factory.mktemp("base") / "llama", layers=2)


@pytest.fixture(scope="module")
def adapter(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lora(tiny, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture
def no_heavy_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if `load` gets as far as reading weights (the checks must come first)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights were loaded before the check")

    monkeypatch.setattr(loading, "load_hf", refuse)
    monkeypatch.setattr(loading, "build_nnsight", refuse)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / folder.name
    shutil.copytree(folder, out)
    return out


def raises(cls: type[NnshiftError], match: str, *args: Any, **kwargs: Any) -> NnshiftError:
    with pytest.raises(cls, match=match) as info:
        load(*args, **kwargs)
    assert info.value.hint  # every error says what to do
    return info.value


def test_looks_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for local in ["/abs/model", "./model", "../model", "~/model", "models/llava", "a/b/c", "model/"]:
        assert looks_local(local), local
    for hub in ["llava-hf/llava-1.5-7b-hf", "gpt2", "org/name"]:
        assert not looks_local(hub), hub


@pytest.mark.usefixtures("no_heavy_work")
def test_missing_local_folder_says_no_such_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in [str(tmp_path / "nope"), "./nope", "../nope-nnshift-test", "~/nope-nnshift-test", "models/llava"]:
        err = raises(ModelNotFoundError, "no such folder", name)
        assert "repo" not in str(err).lower()
        assert isinstance(err, FileNotFoundError)


def test_hub_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    raises(ModelNotFoundError, "cannot find someorg/some-model", "someorg/some-model")


@pytest.mark.usefixtures("no_heavy_work")
def test_empty_folder_and_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    raises(ModelLoadError, "is empty", tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    raises(ModelLoadError, "is a file, not a model folder", tmp_path / "weights.bin")


@pytest.mark.usefixtures("no_heavy_work")
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"model_type": "llama",', "not valid JSON .line 1"),
        ("[]", "JSON list, not an object"),
        ("null", "JSON NoneType, not an object"),
        ('{"hidden_size": 32}', "no model_type"),
    ],
)
def test_broken_config(tiny: Path, tmp_path: Path, text: str, match: str) -> None:
    folder = copy_of(tiny, tmp_path)
    (folder / "config.json").write_text(text)
    raises(ModelConfigError, match, folder)


@pytest.mark.usefixtures("no_heavy_work")
def test_no_config_and_an_adapter_folder_given_as_model(tiny: Path, adapter: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny, tmp_path)
    (folder / "config.json").unlink()
    raises(ModelConfigError, "has no config.json", folder)
    err = raises(ModelConfigError, "is a LoRA adapter folder", adapter)
    assert "lora=" in (err.hint or "")


def test_unknown_model_type(tiny: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "no-such-architecture"
    (folder / "config.json").write_text(json.dumps(config))
    raises(ModelConfigError, "cannot be read by transformers", folder)


@pytest.mark.usefixtures("no_heavy_work")
def test_missing_and_truncated_weights(tiny: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny, tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    raises(ModelWeightsError, "the file has", folder)
    weights.write_bytes(data[:5])
    raises(ModelWeightsError, "too short", folder)
    weights.unlink()
    raises(ModelWeightsError, "no weights", folder)
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    raises(ModelWeightsError, "shard.* are missing.*model-00001-of-00002", folder)


def test_no_weights_is_fine_without_dispatch(tiny: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny, tmp_path)
    (folder / "model.safetensors").unlink()
    vlm = load(folder, dispatch=False)
    assert vlm.is_meta


@pytest.mark.usefixtures("no_heavy_work")
def test_missing_or_broken_lora_folder(tiny: Path, adapter: Path, tmp_path: Path) -> None:
    raises(ModelNotFoundError, "no such folder.*LoRA", tiny, lora=tmp_path / "no-adapter")
    raises(LoraAdapterError, "is a full model folder", tiny, lora=tiny)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    raises(LoraAdapterError, "no adapter_config.json", tiny, lora=tmp_path / "junk")
    broken = copy_of(adapter, tmp_path)
    (broken / "adapter_model.safetensors").unlink()
    raises(ModelWeightsError, "no adapter_model.safetensors", tiny, lora=broken)
    (broken / "adapter_config.json").write_text("{oops")
    raises(ModelConfigError, "adapter_config.json is not valid JSON", tiny, lora=broken)


def _other_llama_adapter(root: Path, hidden: int) -> Path:
    """An adapter made on a tiny Llama with another hidden size (same module names)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4
    )
    other = root / "other-base"
    LlamaForCausalLM(cfg).save_pretrained(other)
    peft_model = get_peft_model(
        LlamaForCausalLM.from_pretrained(other), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    peft_model.save_pretrained(root / "other-adapter")
    return root / "other-adapter"


@pytest.mark.usefixtures("no_heavy_work")
def test_lora_for_another_base_is_refused_before_loading(tiny: Path, tmp_path: Path) -> None:
    other = _other_llama_adapter(tmp_path, hidden=48)
    err = raises(LoraAdapterError, "was made for .*other-base, not for", tiny, lora=other)
    assert "input size 48, model 32" in str(err)


def test_lora_for_another_base_on_a_model_object(tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    other = _other_llama_adapter(tmp_path, hidden=48)
    raises(LoraAdapterError, "was made for", AutoModelForCausalLM.from_pretrained(tiny), lora=other)


def test_lora_with_unknown_modules(tiny: Path, adapter: Path, tmp_path: Path) -> None:
    wrong = copy_of(adapter, tmp_path)
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["target_modules"] = ["c_attn"]  # a GPT-2 adapter's layer: none in a Llama
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    raises(LoraAdapterError, "PEFT cannot load the LoRA adapter", tiny, lora=wrong)


def test_lora_whose_weights_do_not_land(tiny: Path, adapter: Path, tmp_path: Path) -> None:
    """Same targets, but the saved keys name modules this model does not have: PEFT would run the base model."""
    from safetensors.torch import load_file, save_file

    from nnshift.models.lora import tuner_layers

    wrong = copy_of(adapter, tmp_path)
    state = load_file(wrong / "adapter_model.safetensors")
    renamed = {k.replace(".layers.", ".blocks."): v for k, v in state.items()}
    save_file(renamed, wrong / "adapter_model.safetensors")
    raises(LoraAdapterError, "none of its weights found a place", tiny, lora=wrong)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny)
    with pytest.raises(LoraAdapterError):
        load(hf, lora=wrong)
    assert not tuner_layers(hf) and not hasattr(hf, "peft_config")  # not left half-adapted


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.usefixtures("no_heavy_work")
def test_cuda_without_a_gpu(tiny: Path) -> None:
    raises(DeviceError, "'cuda' is not available", tiny, device="cuda")
    raises(DeviceError, "'cuda:1' is not available", tiny, device_map={"": "cuda:1"})
    raises(DeviceError, "'cuda:0' is not available", tiny, device_map={"model": 0})
    raises(DeviceError, "'tpu9' is not available", tiny, device="tpu9")
    raises(NnshiftError, "both device= and device_map=", tiny, device="cpu", device_map="cpu")


def test_device_cpu_and_auto_load(tiny: Path) -> None:
    assert load(tiny, device="cpu").device == torch.device("cpu")
    assert load(tiny, device_map="auto").n_layers == 2


def test_progress_bars_hidden_unless_verbose(tiny: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    capfd.readouterr()
    load(tiny)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the global setting is restored
    load(tiny, verbose=True)
    assert "Loading weights" in capfd.readouterr().err
