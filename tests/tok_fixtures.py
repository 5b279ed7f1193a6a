"""Three tokenizer families built offline: Llama-style sentencepiece, GPT-2 byte-level BPE, Qwen-style BPE."""

from __future__ import annotations

from functools import cache

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "a red circle and a blue square on the grass",
    "there are 3 circles and 1 square",
    "the circle is red and the square is blue",
    "is there a green circle ? yes",
    "how many shapes are there ? 2",
    "a circle , a circle and another circle near the water",
    "red red red blue blue green circle circle square",
] * 20 + ["a triangle", "one hexagon", "1 2 3 4 5 6 7 8 9 0"]

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@cache
def llama_style() -> PreTrainedTokenizerFast:
    """Sentencepiece-like BPE: metaspace marker, single digits split from the marker (as Llama encodes '1' -> ['▁', '1'])."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=90, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return _wrap(tok)


@cache
def gpt2_style() -> PreTrainedTokenizerFast:
    """Byte-level BPE as in GPT-2 (leading-space 'Ġ' tokens)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return _wrap(tok)


@cache
def qwen_style() -> PreTrainedTokenizerFast:
    """Byte-level BPE with a regex split that isolates single digits, as Qwen2 does."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return _wrap(tok)


ALL = {"llama": llama_style, "gpt2": gpt2_style, "qwen": qwen_style}
