"""Loading HF processors, with an image-only fallback where the video processor needs the missing torchvision."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import ProcessorMixin

__all__ = ["image_only_processor", "load_processor", "processor_with", "render_chat"]

# one lenient subclass per processor class (a dict, not functools.cache: mypy does not see classes as Hashable)
_LENIENT: dict[type[ProcessorMixin], type[ProcessorMixin]] = {}


def _lenient(cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A same-named subclass of processor `cls` that accepts ``video_processor=None`` (made once per class)."""
    if cls not in _LENIENT:
        _LENIENT[cls] = _make_lenient(cls)
    return _LENIENT[cls]


def _make_lenient(cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A new same-named subclass of `cls` whose argument check and save accept an absent video processor."""

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument is None and "video" in argument_name:
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    def save_pretrained(self: Any, save_directory: str | Path, **kwargs: Any) -> list[str]:
        if all(getattr(self, name, None) is not None for name in self.get_attributes()):
            return cls.save_pretrained(self, save_directory, **kwargs)
        # transformers' save_pretrained touches every sub-processor: save the ones present, then the config
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer._set_processor_class(cls.__name__)
        self.tokenizer.save_pretrained(folder)
        if isinstance(self.chat_template, str):
            (folder / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        out = folder / "processor_config.json"
        self.to_json_file(str(out))
        return [str(out)]

    namespace = {"check_argument_for_proper_class": check_argument_for_proper_class, "save_pretrained": save_pretrained}
    return cast("type[ProcessorMixin]", type(cls.__name__, (cls,), namespace))


def image_only_processor(cls: type[ProcessorMixin], image_processor: Any, tokenizer: Any, **kwargs: Any) -> Any:
    """Processor `cls` (e.g. Qwen2VLProcessor) built with no video processor (images and text only)."""
    return _lenient(cls)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs)


def _needs_torchvision(exc: BaseException) -> bool:
    """Whether `exc` is transformers failing on a torchvision-only class or an absent video processor."""
    text = str(exc).lower()
    return "torchvision" in text or "video processor" in text or "video_processor" in text


def load_processor(path: str | Path, **kwargs: Any) -> Any:
    """`AutoProcessor.from_pretrained`, falling back to an image-only processor when torchvision is missing."""
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except (ImportError, OSError, ValueError, TypeError, AttributeError) as exc:
        if not _needs_torchvision(exc):
            raise
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    config = AutoConfig.from_pretrained(path, **kwargs)
    # the mapping is annotated for tokenizer pairs; for a config type it holds the processor class
    cls = cast("type[ProcessorMixin]", PROCESSOR_MAPPING[type(config)])
    processor_dict, _ = cls.get_processor_dict(path, **kwargs)
    image_processor = AutoImageProcessor.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    lenient = _lenient(cls)
    names = lenient.get_attributes()
    by_name = {"image_processor": image_processor, "tokenizer": tokenizer}
    args = [by_name.get(name, _nested_sub_processor(processor_dict.get(name))) for name in names]
    return lenient.from_args_and_dict(args, processor_dict)


def _nested_sub_processor(spec: Any) -> Any:
    """A sub-processor (e.g. Gemma 4's audio feature extractor) rebuilt from its dict in processor_config.json."""
    import transformers

    if not isinstance(spec, dict):
        return None
    kind = spec.get("feature_extractor_type") or spec.get("image_processor_type")
    cls = getattr(transformers, kind, None) if isinstance(kind, str) else None
    return cls.from_dict(spec) if cls is not None and hasattr(cls, "from_dict") else None


def render_chat(owner: Any, tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """The chat template of `owner` (processor or tokenizer) applied to `messages`, as text."""
    try:
        return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except AttributeError:
        # e.g. SmolVLM's processor reads its (absent) video processor's settings: render with the tokenizer
        return tokenizer.apply_chat_template(
            messages, chat_template=owner.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def processor_with(model: Any, processor: Any, options: dict[str, Any]) -> Any:
    """The model's processor loaded with ``options`` (e.g. image sizes), from its folder or hub id."""
    from nnshift.errors import ArgumentError

    if processor is not None:
        raise ArgumentError("both processor= and processor_options= given", "pass the options or a built processor")
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ArgumentError(f"processor_options must be a dict of names, got {options!r}", "e.g. {'max_pixels': 1024}")
    module = getattr(model, "_module", model)
    source = (
        str(model) if isinstance(model, (str, Path)) else getattr(getattr(module, "config", None), "name_or_path", "")
    )
    if not source:
        raise ArgumentError(
            "processor_options= needs a folder or hub id to load the processor from",
            "pass processor=AutoProcessor.from_pretrained(path, **options) instead",
        )
    return load_processor(source, **options)
