"""Samples (image + prompt + reference answers) and readers for COCO captions, VQAv2 and JSONL."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from nnshift.errors import DataFormatError, ImageReadError

__all__ = [
    "CAPTION_PROMPT",
    "VQA_SUFFIX",
    "dataset_fingerprint",
    "ImageLike",
    "Sample",
    "load_coco_captions",
    "load_jsonl",
    "load_samples",
    "load_vqav2",
    "save_jsonl",
]

#: the reference code's caption instruction
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
#: the reference code's (LLaVA-1.5's) VQA answer-format suffix
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."

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


def _image_digest(image: ImageLike) -> str:
    """SHA-256 of an image: its file's bytes, or a PIL image's mode, size and pixels; "none" for no image."""
    if image is None:
        return "none"
    if isinstance(image, Image.Image):
        return hashlib.sha256(f"{image.mode}|{image.size}|".encode() + image.tobytes()).hexdigest()
    try:
        return hashlib.sha256(Path(image).read_bytes()).hexdigest()
    except OSError:
        return f"unreadable:{image}"


def dataset_fingerprint(samples: Iterable[Sample]) -> str:
    """SHA-256 over the samples' ids, prompts and image contents, in order (what changes captured numbers)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.prompt, _image_digest(s.image)]).encode() + b"\n")
    return h.hexdigest()


def _read_json(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DataFormatError(f"{what} file not found: {str(path)!r}", "check the path") from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{what} file {str(path)!r} is not valid JSON: {exc}", "check the file") from exc


def _check_limit(limit: Any) -> int:
    """``limit`` checked: an int >= 0 (0 means no samples)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise DataFormatError(
            f"limit must be an integer >= 0, got {limit!r}", "pass limit=N with N >= 0, or None for all"
        )
    return limit


def _limit(samples: list[Sample], limit: int | None, seed: int | None) -> list[Sample]:
    if seed is not None:
        samples = list(samples)
        random.Random(seed).shuffle(samples)
    return samples if limit is None else samples[: _check_limit(limit)]


def _image_index(image_dir: str | Path) -> dict[int, Path]:
    """Map COCO image id -> file, from the trailing digits of each file name (COCO_val2014_000000391895.jpg)."""
    index: dict[int, Path] = {}
    for f in Path(image_dir).rglob("*"):
        m = re.search(r"(\d+)\.(?:jpe?g|png|webp|bmp)$", f.name, re.IGNORECASE)
        if m:
            index.setdefault(int(m.group(1)), f)
    return index


def load_coco_captions(
    annotations: str | Path,
    image_dir: str | Path,
    *,
    split: str | None = None,
    prompt: str = CAPTION_PROMPT,
    limit: int | None = None,
    seed: int | None = None,
) -> list[Sample]:
    """Read COCO captions: the official captions JSON or Karpathy's ``dataset_coco.json`` (one sample per image).

    ``split`` filters Karpathy splits ("train", "restval", "val", "test"); ``seed`` shuffles before ``limit``.
    """
    if limit is not None:
        _check_limit(limit)
    doc = _read_json(annotations, "COCO captions")
    image_dir = Path(image_dir)
    samples: list[Sample] = []
    if isinstance(doc, dict) and "annotations" in doc and "images" in doc:  # official format
        caps: dict[int, list[str]] = {}
        for a in doc["annotations"]:
            caps.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
        for im in doc["images"]:
            iid = int(im["id"])
            samples.append(
                Sample(
                    id=f"coco/{iid}",
                    prompt=prompt,
                    image=image_dir / im["file_name"],
                    answers=caps.get(iid, []),
                    meta={"image_id": iid, "task": "caption"},
                )
            )
    elif isinstance(doc, dict) and "images" in doc and doc["images"] and "sentences" in doc["images"][0]:  # Karpathy
        for im in doc["images"]:
            if split is not None and im.get("split") != split:
                continue
            iid = int(im.get("cocoid", im.get("imgid")))
            path = image_dir / im.get("filepath", "") / im["filename"]
            samples.append(
                Sample(
                    id=f"coco/{iid}",
                    prompt=prompt,
                    image=path,
                    answers=[str(s["raw"]).strip() for s in im["sentences"]],
                    meta={"image_id": iid, "task": "caption", "split": im.get("split")},
                )
            )
    else:
        raise DataFormatError(
            f"{str(annotations)!r} is neither an official COCO captions JSON nor a Karpathy dataset_coco.json",
            "pass captions_*.json (with 'images' and 'annotations') or Karpathy's dataset_coco.json",
        )
    return _limit(samples, limit, seed)


def load_vqav2(
    questions: str | Path,
    annotations: str | Path | None,
    image_dir: str | Path,
    *,
    suffix: str = VQA_SUFFIX,
    answer_types: Iterable[str] | None = None,
    limit: int | None = None,
    seed: int | None = None,
) -> list[Sample]:
    """Read VQAv2 questions (+ annotations with answer types); images are found by COCO id in ``image_dir``.

    ``meta["answer_type"]`` is "yes/no", "number" or "other"; ``answers`` are the annotators' answers,
    most common (``multiple_choice_answer``) first.
    """
    if limit is not None:
        _check_limit(limit)
    qdoc = _read_json(questions, "VQAv2 questions")
    if not isinstance(qdoc, dict) or "questions" not in qdoc:
        raise DataFormatError(
            f"{str(questions)!r} has no 'questions' list", "pass v2_OpenEnded_mscoco_*_questions.json"
        )
    anns: dict[int, dict[str, Any]] = {}
    if annotations is not None:
        adoc = _read_json(annotations, "VQAv2 annotations")
        if not isinstance(adoc, dict) or "annotations" not in adoc:
            raise DataFormatError(
                f"{str(annotations)!r} has no 'annotations' list", "pass v2_mscoco_*_annotations.json"
            )
        anns = {int(a["question_id"]): a for a in adoc["annotations"]}
    index = _image_index(image_dir)
    keep = set(answer_types) if answer_types is not None else None
    samples: list[Sample] = []
    for q in qdoc["questions"]:
        qid, iid = int(q["question_id"]), int(q["image_id"])
        a = anns.get(qid, {})
        atype = a.get("answer_type")
        if keep is not None and atype not in keep:
            continue
        answers = [str(x["answer"]) for x in a.get("answers", [])]
        mc = a.get("multiple_choice_answer")
        if mc is not None:
            answers = [mc] + [x for x in answers if x != mc]
        samples.append(
            Sample(
                id=f"vqav2/{qid}",
                prompt=str(q["question"]).strip() + suffix,
                image=index.get(iid, Path(image_dir) / f"{iid:012d}.jpg"),
                answers=answers,
                meta={"question_id": qid, "image_id": iid, "answer_type": atype, "task": "vqa"},
            )
        )
    return _limit(samples, limit, seed)


def load_jsonl(
    path: str | Path, image_dir: str | Path | None = None, *, limit: int | None = None, seed: int | None = None
) -> list[Sample]:
    """Read one sample per line: ``{"id", "prompt" (or "question"), "image" (relative to image_dir), "answers" (or "answer"), "meta"}``.

    ``seed`` shuffles before ``limit``; ``limit=0`` gives no samples.
    """
    from nnshift.arguments import check_int, check_path

    if limit is not None:
        _check_limit(limit)
    check_int(seed, "seed", optional=True)
    path, image_dir = check_path(path, "path"), check_path(image_dir, "image_dir", optional=True)
    base = Path(image_dir) if image_dir is not None else path.parent
    samples: list[Sample] = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise DataFormatError(f"JSONL file not found: {str(path)!r}", "check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read {str(path)!r} as UTF-8 JSONL: {exc}", "pass a .jsonl text file") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            prompt = d.get("prompt", d.get("question"))
            if prompt is None:
                raise KeyError("prompt")
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise DataFormatError(
                f"{str(path)!r} line {n}: not a JSON object with a 'prompt' (or 'question') field",
                'each line must look like {"id": "1", "prompt": "...", "image": "a.jpg", "answers": ["..."]}',
            ) from exc
        answers = d.get("answers", d.get("answer", []))
        samples.append(
            Sample(
                id=str(d.get("id", n - 1)),
                prompt=str(prompt),
                image=base / d["image"] if d.get("image") else None,
                answers=[answers] if isinstance(answers, str) else [str(a) for a in answers],
                meta=dict(d.get("meta", {})),
            )
        )
    return _limit(samples, limit, seed)


def save_jsonl(samples: Iterable[Sample], path: str | Path, image_dir: str | Path | None = None) -> Path:
    """Write samples as JSONL; in-memory PIL images are saved as PNG files under ``image_dir``."""
    from nnshift.store import atomic_write_bytes

    path = Path(path)
    img_dir = Path(image_dir) if image_dir is not None else path.parent / "images"
    lines = []
    for s in samples:
        image: str | None = None
        if isinstance(s.image, Image.Image):
            img_dir.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", s.id) + ".png"
            s.image.save(img_dir / name)
            image = str((img_dir / name).resolve())
        elif s.image is not None:
            image = str(Path(s.image).resolve())
        lines.append(json.dumps({"id": s.id, "prompt": s.prompt, "image": image, "answers": s.answers, "meta": s.meta}))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def load_samples(path: str | Path, image_dir: str | Path | None = None, **kw: Any) -> list[Sample]:
    """Read a dataset by its format: ``.jsonl`` or a COCO captions JSON (Karpathy or official)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return load_jsonl(path, image_dir, limit=kw.get("limit"), seed=kw.get("seed"))
    if image_dir is None:
        raise DataFormatError(f"{str(path)!r}: a COCO JSON needs an image folder", "pass image_dir (--images)")
    return load_coco_captions(path, image_dir, **kw)
