"""Tiny random models of every supported family, built offline and saved with save_pretrained (for tests)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nnshift.models.processors import image_only_processor

__all__ = [
    "ARCHES",
    "MULTIMODAL_ARCHES",
    "TEXT_ARCHES",
    "build_tiny",
    "cached_tiny",
    "tiny_tokenizer",
    "tiny_image",
    "save_tiny_lora",
    "WORDS",
]

_WORDS_TEXT = """a an the is are was what which who where how many much color colour of in on at to and or with this
that there here it its image picture photo show shows describe briefly question answer yes no one two three four five
six seven eight nine ten zero dog dogs cat cats bird car bus red blue green yellow black white orange purple brown pink
gray big small large circle square triangle shape shapes left right top bottom middle next man woman person people
table chair tree sky grass water street room sitting standing near above below do does can you see please word user
assistant system model USER ASSISTANT Assistant User 0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' " - ( ) / = + *"""
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORDS_TEXT.split()))

# Jinja fragment rendering one message's content; IMG is replaced by each family's image marker.
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}IMG"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
)


def _content(image_marker: str) -> str:
    """The content-rendering Jinja fragment with `image_marker` for image parts."""
    return _CONTENT.replace("IMG", image_marker)


def _quiet() -> None:
    """Silence transformers' backend-fallback chatter while building."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*torchvision.*")


_TOKENIZER_CLASSES = {
    "llama": "LlamaTokenizer",
    "gemma": "GemmaTokenizer",
    "qwen2": "Qwen2Tokenizer",
    "gpt2": "GPT2Tokenizer",
}


def _corpus() -> list[str]:
    """Training text for the tiny BPE tokenizers: every word, alone, after a space and after a newline."""
    words = list(WORDS)
    lines = [" ".join(words), " " + " ".join(words), "\n".join(words), "\n\n".join(words)]
    lines += ["what color is the dog ?\n", "how many cats are there ?\n", "describe the image briefly .\n"]
    return lines * 4


def tiny_tokenizer(
    kind: str = "llama",
    special: Sequence[str] = (),
    *,
    chat_template: str | None = None,
    vocab_size: int = 512,
    add_bos: bool | None = None,
    attributes: dict[str, str] | None = None,
) -> Any:
    """A small BPE tokenizer of the given family's own class (llama, gemma, qwen2, gpt2), trained offline.

    Being an instance of the family's class, it reloads identically through AutoTokenizer. `special` tokens are
    added as special tokens; `attributes` sets named special-token attributes (e.g. ``image_token``).
    """
    import transformers

    cls = getattr(transformers, _TOKENIZER_CLASSES[kind])
    base = cls()
    tok = base.train_new_from_iterator(_corpus(), vocab_size=vocab_size, new_special_tokens=list(special))
    if kind in ("llama", "gemma"):
        tok.add_bos_token = True if add_bos is None else add_bos
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if attributes:
        # named model-specific special tokens (tok.image_token / tok.image_token_id), saved in tokenizer_config.json
        tok._set_model_specific_special_tokens(special_tokens=dict(attributes))
    tok.padding_side = "left"
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def tiny_image(seed: int = 0, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """A random RGB PIL image (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def _llama_text(vocab: int, layers: int = 2, **kw: Any) -> Any:
    """A tiny LlamaConfig."""
    from transformers import LlamaConfig

    base = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    }
    base.update(kw)
    return LlamaConfig(**base)


def _finish(model: Any, tok: Any, folder: Path, processor: Any = None) -> Path:
    """Set special-token ids on the configs, then save model + tokenizer/processor to `folder`."""
    for cfg in [model.config, getattr(model.config, "text_config", None), model.generation_config]:
        if cfg is None:
            continue
        cfg.pad_token_id = tok.pad_token_id
        cfg.eos_token_id = tok.eos_token_id
        cfg.bos_token_id = tok.bos_token_id
    model.generation_config.do_sample = False
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    else:
        tok.save_pretrained(folder)
    return folder


def _siglip_vision(layers: int, image: int = 32, patch: int = 8, hidden: int = 16) -> Any:
    """A tiny SiglipVisionConfig."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        image_size=image,
        patch_size=patch,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
    )


def _clip_vision(layers: int, image: int = 32, patch: int = 8) -> Any:
    """A tiny CLIPVisionConfig."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=image,
        patch_size=patch,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        projection_dim=16,
    )


# ---------------------------------------------------------------------------- text-only

_PLAIN_CHAT = (
    "{% for message in messages %}{{ message['role'] }}: " + _content("") + "\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + _content("<|vision_start|><|image_pad|><|vision_end|>")
    + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_llama(folder: Path, layers: int = 4, **_: Any) -> Path:
    """Tiny LlamaForCausalLM with a chat template."""
    from transformers import LlamaForCausalLM

    tok = tiny_tokenizer("llama", chat_template=_PLAIN_CHAT)
    model = LlamaForCausalLM(_llama_text(len(tok), layers=layers))
    return _finish(model, tok, folder)


def _build_qwen2(folder: Path, layers: int = 3, **_: Any) -> Path:
    """Tiny Qwen2ForCausalLM (no BOS, ChatML end-of-turn token)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer("qwen2", ["<|im_start|>", "<|im_end|>"], chat_template=_CHATML)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return _finish(Qwen2ForCausalLM(cfg), tok, folder)


def _build_gpt2(folder: Path, layers: int = 3, **_: Any) -> Path:
    """Tiny GPT2LMHeadModel (no chat template: prompts are used as they are)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer("gpt2")
    eos = tok.eos_token_id
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=layers, n_head=4, n_positions=256, bos_token_id=eos, eos_token_id=eos
    )
    return _finish(GPT2LMHeadModel(cfg), tok, folder)


# ---------------------------------------------------------------------------- LLaVA / LLaVA-NeXT

_LLAVA_CHAT = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    + _content("<image>\n")
    + "{% if message['role'] != 'user' %}</s>{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _build_llava(folder: Path, vision_layers: int = 6, text_layers: int = 2, **_: Any) -> Path:
    """Tiny LLaVA-1.5: CLIP tower (deeper than the LM by default) + Llama; 16 image tokens per image."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tiny_tokenizer("llama", ["<image>"])
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=8,
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        chat_template=_LLAVA_CHAT,
    )
    cfg = LlavaConfig(
        vision_config=_clip_vision(vision_layers),
        text_config=_llama_text(len(tok), layers=text_layers),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    return _finish(LlavaForConditionalGeneration(cfg), tok, folder, proc)


def _build_llava_next(folder: Path, vision_layers: int = 3, text_layers: int = 2, **_: Any) -> Path:
    """Tiny LLaVA-NeXT (any-resolution tiling over a 32x32 CLIP tower) + Llama."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    pinpoints = [[32, 32], [32, 64], [64, 32]]
    tok = tiny_tokenizer("llama", ["<image>"])
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    proc = LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_LLAVA_CHAT,
    )
    cfg = LlavaNextConfig(
        vision_config=_clip_vision(vision_layers),
        text_config=_llama_text(len(tok), layers=text_layers),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    return _finish(LlavaNextForConditionalGeneration(cfg), tok, folder, proc)


# ---------------------------------------------------------------------------- Qwen2-VL / Qwen2.5-VL

_QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen_text(vocab: int, layers: int) -> dict[str, Any]:
    """Tiny Qwen2-VL text config (head_dim 8, M-RoPE sections 1+1+2)."""
    return {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        "bos_token_id": None,
    }


def _build_qwen_vl(folder: Path, version: str, vision_layers: int = 2, text_layers: int = 2) -> Path:
    """Tiny Qwen2-VL or Qwen2.5-VL: 56x56 images -> 4x4 patches of 14 -> 4 merged image tokens."""
    import transformers

    tok = tiny_tokenizer("qwen2", _QWEN_SPECIALS, chat_template=_CHATML)
    ip = transformers.Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if version == "2":
        vision = {
            "depth": vision_layers,
            "embed_dim": 16,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        cfg = transformers.Qwen2VLConfig(text_config=_qwen_text(len(tok), text_layers), vision_config=vision, **tokens)
        model = transformers.Qwen2VLForConditionalGeneration(cfg)
        proc = image_only_processor(transformers.Qwen2VLProcessor, ip, tok, chat_template=_CHATML)
    else:
        vision = {
            "depth": vision_layers,
            "hidden_size": 16,
            "intermediate_size": 32,
            "out_hidden_size": 32,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [vision_layers - 1],
        }
        cfg = transformers.Qwen2_5_VLConfig(
            text_config=_qwen_text(len(tok), text_layers), vision_config=vision, **tokens
        )
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
        proc = image_only_processor(transformers.Qwen2_5_VLProcessor, ip, tok, chat_template=_CHATML)
    return _finish(model, tok, folder, proc)


def _build_qwen2_vl(folder: Path, **kw: Any) -> Path:
    """Tiny Qwen2VLForConditionalGeneration."""
    return _build_qwen_vl(folder, "2", **kw)


def _build_qwen2_5_vl(folder: Path, **kw: Any) -> Path:
    """Tiny Qwen2_5_VLForConditionalGeneration."""
    return _build_qwen_vl(folder, "2.5", **kw)


# ---------------------------------------------------------------------------- Idefics2 / Idefics3 / SmolVLM

_IDEFICS_CHAT = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    + _content("<image>")
    + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
_IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]


def _build_idefics2(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Idefics2 (SigLIP-like tower + perceiver resampler with 4 latents + Mistral)."""
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessorPil,
        Idefics2Processor,
    )

    tok = tiny_tokenizer("llama", _IDEFICS_SPECIALS[:3])
    ip = Idefics2ImageProcessorPil(do_image_splitting=False, size={"shortest_edge": 32, "longest_edge": 32})
    proc = Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=_IDEFICS_CHAT)
    cfg = Idefics2Config(
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        perceiver_config={
            "hidden_act": "silu",
            "resampler_n_latents": 4,
            "resampler_depth": 1,
            "resampler_n_heads": 2,
            "resampler_head_dim": 8,
            "num_key_value_heads": 1,
            "hidden_size": 32,
            "rms_norm_eps": 1e-6,
        },
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": text_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
        },
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    return _finish(Idefics2ForConditionalGeneration(cfg), tok, folder, proc)


def _build_idefics3(
    folder: Path, smolvlm: bool = False, vision_layers: int = 2, text_layers: int = 2, **_: Any
) -> Path:
    """Tiny Idefics3 (or SmolVLM): 32x32 images, patch 8, pixel-shuffle 2 -> 4 image tokens, no splitting."""
    import transformers

    tok = tiny_tokenizer("llama", _IDEFICS_SPECIALS)
    prefix = "SmolVLM" if smolvlm else "Idefics3"
    ip = getattr(transformers, f"{prefix}ImageProcessorPil")(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    if smolvlm:
        proc = image_only_processor(
            transformers.SmolVLMProcessor, ip, tok, image_seq_len=4, chat_template=_IDEFICS_CHAT
        )
    else:
        proc = transformers.Idefics3Processor(
            image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=_IDEFICS_CHAT
        )
    cfg = getattr(transformers, f"{prefix}Config")(
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config=_llama_text(len(tok), layers=text_layers).to_dict(),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(cfg)
    return _finish(model, tok, folder, proc)


def _build_smolvlm(folder: Path, **kw: Any) -> Path:
    """Tiny SmolVLMForConditionalGeneration."""
    return _build_idefics3(folder, smolvlm=True, **kw)


# ---------------------------------------------------------------------------- Gemma3 / PaliGemma

_GEMMA_CHAT = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else"
    " message['role'] }}\n" + _content("<start_of_image>") + "<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _gemma_text(vocab: int, layers: int) -> dict[str, Any]:
    """Tiny Gemma-family text config fields."""
    return {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 512,
    }


def _build_gemma3(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny Gemma3 image-text model: SigLIP 32x32/8 -> 16 patches pooled to 4 soft image tokens."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
    )

    specials = ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"]
    tok = tiny_tokenizer(
        "gemma",
        specials,
        attributes={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False)
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=_GEMMA_CHAT, image_seq_length=4)
    text = Gemma3TextConfig(**_gemma_text(len(tok), text_layers), sliding_window=64)
    cfg = Gemma3Config(
        text_config=text,
        vision_config=_siglip_vision(vision_layers),
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    return _finish(Gemma3ForConditionalGeneration(cfg), tok, folder, proc)


def _build_paligemma(folder: Path, vision_layers: int = 2, text_layers: int = 2, **_: Any) -> Path:
    """Tiny PaliGemma: SigLIP 32x32/8 -> 16 image tokens prefixed to the prompt, Gemma decoder."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    tok = tiny_tokenizer("gemma", ["<image>"], attributes={"image_token": "<image>"})
    ip = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    cfg = PaliGemmaConfig(
        vision_config=_siglip_vision(vision_layers),
        text_config=GemmaConfig(**_gemma_text(len(tok), text_layers)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=32,
        hidden_size=32,
    )
    return _finish(PaliGemmaForConditionalGeneration(cfg), tok, folder, proc)


_BUILDERS: dict[str, Callable[..., Path]] = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": _build_qwen2_5_vl,
    "idefics2": _build_idefics2,
    "idefics3": _build_idefics3,
    "smolvlm": _build_smolvlm,
    "gemma3": _build_gemma3,
    "paligemma": _build_paligemma,
    "llama": _build_llama,
    "qwen2": _build_qwen2,
    "gpt2": _build_gpt2,
}

MULTIMODAL_ARCHES: tuple[str, ...] = (
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics2",
    "idefics3",
    "smolvlm",
    "gemma3",
    "paligemma",
)
TEXT_ARCHES: tuple[str, ...] = ("llama", "qwen2", "gpt2")
ARCHES: tuple[str, ...] = MULTIMODAL_ARCHES + TEXT_ARCHES


def build_tiny(arch: str, folder: str | Path, *, seed: int = 0, **options: Any) -> Path:
    """Build a tiny random model of family `arch` (see `ARCHES`) and save it with its processor to `folder`."""
    if arch not in _BUILDERS:
        raise KeyError(f"unknown tiny arch {arch!r}; choose from {sorted(_BUILDERS)}")
    _quiet()
    torch.manual_seed(seed)
    return _BUILDERS[arch](Path(folder), **options)


def save_tiny_lora(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    rank: int = 4,
    seed: int = 0,
    scale: float = 0.5,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> Path:
    """A random non-zero LoRA adapter for the tiny model at `model_dir` (causal LM or image-text), saved to `out_dir`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(str(model_dir))
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    base = auto.from_pretrained(str(model_dir))
    lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules))
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, scale)
    out = Path(out_dir)
    peft_model.save_pretrained(out)
    return out


_CACHE: dict[tuple[str, tuple[tuple[str, Any], ...]], Path] = {}


def cached_tiny(arch: str, **options: Any) -> Path:
    """`build_tiny` into a per-process temporary folder, built once per (arch, options) and reused."""
    import tempfile

    key = (arch, tuple(sorted(options.items())))
    if key not in _CACHE or not (_CACHE[key] / "config.json").exists():
        _CACHE[key] = build_tiny(arch, Path(tempfile.mkdtemp(prefix=f"nnshift-tiny-{arch}-")) / arch, **options)
    return _CACHE[key]
