"""Build the shapes models from configs: word-level fast tokenizer, CLIP image processor, LLaVA processor and model.

Everything is a standard Hugging Face object saved with ``save_pretrained``, so a zoo folder loads exactly like a
real LLaVA checkpoint (``AutoProcessor`` + ``LlavaForConditionalGeneration``, or nnsight's TransformersModel).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from nnshift.zoo.world import IMAGE_SIZE, VOCABULARY

__all__ = [
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "PATCH_SIZE",
    "NUM_IMAGE_TOKENS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "build_tokenizer",
    "build_image_processor",
    "build_processor",
    "build_config",
    "build_model",
    "pixel_values",
    "quiet_transformers",
]

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, IMAGE)
PATCH_SIZE = 16
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # CLS dropped ("default" feature selection)
IMAGE_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# "user: describe the image <image> assistant:" ; the image comes after the text (whatever the content order), so
# that image tokens can attend to the question (causal attention); answers end with the eos token.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ 'user: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image> ' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'assistant: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ ' </s> ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'assistant:' }}{%- endif -%}"
)


def quiet_transformers() -> None:
    """Silence the torchvision-fallback warning of the CLIP image processor (harmless for 48x48 images)."""
    logging.getLogger("transformers.models.clip.image_processing_clip").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def build_tokenizer() -> Any:
    """A lower-casing word-level fast tokenizer over the world's words, adding <s> in front; decoding re-attaches ','."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *VOCABULARY))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    return fast


def build_image_processor() -> Any:
    """A CLIP image processor for 48x48 images (resize + center crop to 48, CLIP mean / std)."""
    quiet_transformers()
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_convert_rgb=True,
    )


def build_processor() -> Any:
    """The LLaVA processor: image processor + tokenizer + chat template, one <image> expanded to 9 image tokens."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=build_image_processor(),
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


def build_config(text_layers: int = 4, text_hidden: int = 128, vision_hidden: int = 64, vision_layers: int = 2) -> Any:
    """The LlavaConfig: a 2-layer CLIP vision tower on 48x48 images (patch 16) and a 4-layer Llama of hidden 128."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *VOCABULARY))}
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 3,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD],
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab[IMAGE],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        image_seq_length=NUM_IMAGE_TOKENS,
        tie_word_embeddings=False,
    )


def build_model(seed: int = 0) -> Any:
    """A freshly initialised LlavaForConditionalGeneration (seeded), eager attention, float32."""
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = build_config()
    config._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(config)
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *VOCABULARY))}
    model.generation_config = GenerationConfig(
        bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD], do_sample=False, max_new_tokens=40
    )
    return model.float()


def pixel_values(images: list[Image.Image]) -> Float[Tensor, "b 3 h w"]:
    """Images to normalised pixel values, as the image processor does for 48x48 RGB images (fast path for training)."""
    import numpy as np

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 255.0
    mean = np.asarray(IMAGE_MEAN, dtype=np.float32)
    std = np.asarray(IMAGE_STD, dtype=np.float32)
    arr = (arr - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
