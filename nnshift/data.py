"""Samples (image + prompt + reference answers) and readers for COCO captions, VQAv2 and JSONL."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from nnshift.errors import ImageReadError

__all__ = ["Sample", "ImageLike"]

ImageLike = Image.Image | str | Path | None


@dataclass
class Sample:
    """One input: an image (PIL image, path, or None for text-only), a prompt, reference answers.

    For VQA, ``meta["answer_type"]`` is one of VQAv2's ``"yes/no"``, ``"number"``, ``"other"``.
    ``id`` is unique within a dataset and is what pairs the activations of two models.
    """

    id: str
    prompt: str
    image: ImageLike = None
    answers: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def load_image(self) -> Image.Image | None:
        """The image as an RGB PIL image (None for a text-only sample)."""
        if self.image is None:
            return None
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        try:
            with Image.open(self.image) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ImageReadError(
                f"sample {self.id!r}: cannot read image {str(self.image)!r}: {exc}",
                "check that the file exists and is a valid image, or drop this sample",
            ) from exc
