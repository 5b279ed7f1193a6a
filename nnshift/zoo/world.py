"""The shapes world: seeded scenes of coloured shapes on a background, their captions, VQA and file writers.

Every image is 48x48 RGB, cut into a 3x3 grid of 16x16 cells. Objects sit in five cells (top, left, center,
right, bottom); the four corner cells always show the background. Each sample keeps its full ground truth in
``Sample.meta``: the objects (shape, color, size, position), the background, the count, the caption style or the
question kind and answer type.

The scene of sample ``i`` depends only on ``(seed, i)``: datasets of different styles or tasks with the same seed
share their images, like the caption subsets of COCO.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from nnshift.data import Sample
from nnshift.errors import DataFormatError
from nnshift.store import atomic_write_bytes

__all__ = [
    "SHAPES",
    "COLORS",
    "SIZES",
    "POSITIONS",
    "BACKGROUNDS",
    "STYLES",
    "TASKS",
    "ANSWER_TYPES",
    "QUESTION_KINDS",
    "CAPTION_PROMPT",
    "REFERENCE_CAPTION_PROMPT",
    "LLAVA_VQA_SUFFIX",
    "IMAGE_SIZE",
    "CELL",
    "VOCABULARY",
    "random_scene",
    "render",
    "cell_words",
    "caption",
    "question",
    "dataset",
    "words",
    "write_coco_captions",
    "write_vqav2",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "big")
POSITIONS: tuple[str, ...] = ("top", "left", "center", "right", "bottom")  # also the order objects are named in
BACKGROUNDS: tuple[str, ...] = ("grass", "water", "sky", "sand", "plain")
STYLES: tuple[str, ...] = ("generic", "colors", "places")
TASKS: tuple[str, ...] = ("caption", "vqa")
ANSWER_TYPES: tuple[str, ...] = ("yes/no", "number", "other")
QUESTION_KINDS: dict[str, tuple[str, ...]] = {
    "yes/no": ("exists_color_shape", "exists_shape"),
    "number": ("count",),
    "other": ("color_of_shape", "shape_of_color", "position_of_shape", "background"),
}
CAPTION_PROMPT = "describe the image"
#: other prompts the models are trained on, so that samples read back with nnshift.data's defaults work too
REFERENCE_CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
LLAVA_VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
IMAGE_SIZE = 48
CELL = 16
GENERIC_COLOR_RATE = 0.3  # share of objects named with their colour in a generic caption

_CELLS: dict[str, tuple[int, int]] = {
    "top": (0, 1),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom": (2, 1),
}
_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (30, 60, 235),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 205),
    "orange": (250, 135, 20),
}
_OUTLINE = (25, 25, 25)
_POSITION_PHRASE = {
    "top": "at the top",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom": "at the bottom",
}
_PLACE_PHRASE = {
    "grass": "on the grass",
    "water": "on the water",
    "sky": "in the sky",
    "sand": "on the sand",
    "plain": "on a plain background",
}
_EXTRA_WORDS = (
    "user assistant : ? , . a an and the on in at of is are there what how many where color shape shapes "
    "describe image picture background yes no 0 1 2 3 4 5 this it "
    "provide one - sentence caption for provided answer question using single word or phrase"
)
_STYLE_CODE = {"generic": 1, "colors": 2, "places": 3}
_TYPE_CODE = {"all": 10, "yes/no": 11, "number": 12, "other": 13}


def words() -> list[str]:
    """Every word the world's captions, questions and answers can use (the models' vocabulary, in a fixed order)."""
    out: list[str] = []
    for group in (_EXTRA_WORDS.split(), SHAPES, COLORS, SIZES, POSITIONS, BACKGROUNDS):
        for w in group:
            if w not in out:
                out.append(w)
    prompts = (CAPTION_PROMPT, REFERENCE_CAPTION_PROMPT, LLAVA_VQA_SUFFIX)
    for phrase in (*_POSITION_PHRASE.values(), *_PLACE_PHRASE.values(), *prompts):
        for w in re.findall(r"\w+|[^\w\s]+", phrase.lower()):  # as the tokenizer splits (after lower-casing)
            if w not in out:
                out.append(w)
    return out


VOCABULARY: tuple[str, ...] = tuple(words())


def random_scene(rng: np.random.Generator) -> dict[str, Any]:
    """Draw a scene: 1 to 4 objects of distinct shapes, distinct colours and distinct positions, and a background."""
    n = int(rng.integers(1, 5))
    positions = sorted(rng.choice(len(POSITIONS), size=n, replace=False).tolist())
    shapes = rng.choice(len(SHAPES), size=n, replace=False).tolist()
    colors = rng.choice(len(COLORS), size=n, replace=False).tolist()
    sizes = rng.integers(0, 2, size=n).tolist()
    objects = [
        {"shape": SHAPES[s], "color": COLORS[c], "size": SIZES[z], "position": POSITIONS[p]}
        for p, s, c, z in zip(positions, shapes, colors, sizes, strict=True)
    ]
    background = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    render_seed = int(rng.integers(0, 2**31 - 1))
    return {"objects": objects, "background": background, "count": n, "render_seed": render_seed}


def _background(name: str, rng: np.random.Generator) -> Image.Image:
    """A 48x48 textured background standing for a place."""
    s = IMAGE_SIZE
    base = {
        "grass": (95, 150, 70),
        "water": (55, 105, 180),
        "sky": (150, 200, 245),
        "sand": (225, 200, 145),
        "plain": (200, 200, 200),
    }[name]
    im = Image.new("RGB", (s, s), base)
    d = ImageDraw.Draw(im)
    if name == "grass":
        for _ in range(70):
            x, y, h = int(rng.integers(0, s)), int(rng.integers(0, s)), int(rng.integers(2, 5))
            shade = (55, 115, 40) if rng.random() < 0.6 else (135, 185, 95)
            d.line([(x, y), (x + int(rng.integers(-1, 2)), y - h)], fill=shade)
    elif name == "water":
        for y0 in range(int(rng.integers(0, 5)), s, 6):
            phase = rng.random() * 6.28
            pts = [(x, y0 + round(1.5 * np.sin(phase + x / 3.0))) for x in range(0, s, 2)]
            d.line(pts, fill=(105, 155, 220))
    elif name == "sky":
        for _ in range(int(rng.integers(2, 4))):
            cx, cy = int(rng.integers(0, s)), int(rng.integers(0, s))
            w, h = int(rng.integers(5, 10)), int(rng.integers(2, 4))
            d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=(240, 245, 250))
    elif name == "sand":
        for _ in range(120):
            x, y = int(rng.integers(0, s)), int(rng.integers(0, s))
            d.point((x, y), fill=(185, 160, 105) if rng.random() < 0.7 else (245, 230, 190))
    arr = np.asarray(im, dtype=np.int16) + rng.integers(-5, 6, size=(s, s, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill: tuple[int, int, int]) -> None:
    """Draw one outlined shape of half-size ``r`` centred at (cx, cy)."""
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=_OUTLINE)
    elif shape == "square":
        q = max(2, round(r * 0.85))
        d.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill, outline=_OUTLINE)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill, outline=_OUTLINE)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill, outline=_OUTLINE)
    elif shape == "cross":
        t = max(1, round(r * 0.35))
        pts = [
            (cx - t, cy - r),
            (cx + t, cy - r),
            (cx + t, cy - t),
            (cx + r, cy - t),
            (cx + r, cy + t),
            (cx + t, cy + t),
            (cx + t, cy + r),
            (cx - t, cy + r),
            (cx - t, cy + t),
            (cx - r, cy + t),
            (cx - r, cy - t),
            (cx - t, cy - t),
        ]
        d.polygon(pts, fill=fill, outline=_OUTLINE)
    else:
        raise DataFormatError(f"unknown shape {shape!r}", f"use one of {list(SHAPES)}")


def render(scene: dict[str, Any]) -> Image.Image:
    """Render a scene to a 48x48 RGB PIL image (deterministic given the scene, which carries its render seed)."""
    rng = np.random.default_rng(int(scene.get("render_seed", 0)))
    im = _background(scene["background"], rng)
    d = ImageDraw.Draw(im)
    for obj in scene["objects"]:
        row, col = _CELLS[obj["position"]]
        cx = col * CELL + 7 + int(rng.integers(0, 2))
        cy = row * CELL + 7 + int(rng.integers(0, 2))
        r = 7 if obj["size"] == "big" else 4
        base = np.array(_RGB[obj["color"]], dtype=np.int16) + rng.integers(-12, 13, size=3)
        fill = tuple(int(v) for v in np.clip(base, 0, 255))
        _draw_shape(d, obj["shape"], cx, cy, r, fill)  # type: ignore[arg-type]
    return im


def cell_words(scene: dict[str, Any]) -> list[list[str]]:
    """The words describing each of the 9 cells in raster order: [shape, color, size, position] for an object,
    the background word four times for an empty cell (the symbolic scene the language model is pretrained on)."""
    rows = [[scene["background"]] * 4 for _ in range(9)]
    for o in scene["objects"]:
        r, c = _CELLS[o["position"]]
        rows[r * 3 + c] = [o["shape"], o["color"], o["size"], o["position"]]
    return rows


def _article(word: str) -> str:
    """'a' or 'an' before ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def _join(items: Sequence[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption(meta: dict[str, Any], style: str, rng: np.random.Generator | None = None) -> str:
    """The caption of a scene in a style: generic (shapes, colour sometimes), colors (every colour), places.

    Objects are named in the fixed order of ``SHAPES`` (circle first). In the generic style each object's
    colour is named with probability 0.3, drawn from ``rng`` (never named without an ``rng``).
    """
    objs = sorted(meta["objects"], key=lambda o: SHAPES.index(o["shape"]))
    if style == "generic":
        items = []
        for o in objs:
            if rng is not None and rng.random() < GENERIC_COLOR_RATE:
                items.append(f"{_article(o['color'])} {o['color']} {o['shape']}")
            else:
                items.append(f"{_article(o['shape'])} {o['shape']}")
        return _join(items)
    if style == "colors":
        return _join([f"{_article(o['color'])} {o['color']} {o['shape']}" for o in objs])
    if style == "places":
        items = [f"{_article(o['shape'])} {o['shape']} {_POSITION_PHRASE[o['position']]}" for o in objs]
        return f"{_join(items)}, {_PLACE_PHRASE[meta['background']]}"
    raise DataFormatError(f"unknown caption style {style!r}", f"use one of {list(STYLES)}")


def question(
    meta: dict[str, Any], rng: np.random.Generator, answer_type: str | None = None, kind: str | None = None
) -> tuple[str, str, str, str]:
    """Draw a question about a scene: (question, answer, answer_type, question_kind), yes/no answers balanced."""
    if kind is not None:
        answer_type = next((t for t, ks in QUESTION_KINDS.items() if kind in ks), None)
        if answer_type is None:
            raise DataFormatError(f"unknown question kind {kind!r}", f"use one of {QUESTION_KINDS}")
    if answer_type is None:
        answer_type = ANSWER_TYPES[int(rng.integers(0, 3))]
    if answer_type not in QUESTION_KINDS:
        raise DataFormatError(f"unknown answer type {answer_type!r}", f"use one of {list(ANSWER_TYPES)}")
    if kind is None:
        kinds = QUESTION_KINDS[answer_type]
        kind = kinds[int(rng.integers(0, len(kinds)))]
    objs = meta["objects"]
    obj = objs[int(rng.integers(0, len(objs)))]
    present_shapes = {o["shape"] for o in objs}
    if kind == "exists_color_shape":
        if rng.random() < 0.5:
            return f"is there {_article(obj['color'])} {obj['color']} {obj['shape']}?", "yes", answer_type, kind
        pairs = {(o["color"], o["shape"]) for o in objs}
        # hard negatives first: a present shape in another colour, or a present colour on another shape
        options = [(c, obj["shape"]) for c in COLORS] + [(obj["color"], s) for s in SHAPES]
        if rng.random() < 0.3:
            options = [(c, s) for c in COLORS for s in SHAPES]
        options = [p for p in options if p not in pairs]
        c, s = options[int(rng.integers(0, len(options)))]
        return f"is there {_article(c)} {c} {s}?", "no", answer_type, kind
    if kind == "exists_shape":
        absent = [s for s in SHAPES if s not in present_shapes]
        if rng.random() < 0.5 or not absent:
            return f"is there {_article(obj['shape'])} {obj['shape']}?", "yes", answer_type, kind
        s = absent[int(rng.integers(0, len(absent)))]
        return f"is there {_article(s)} {s}?", "no", answer_type, kind
    if kind == "count":
        return "how many shapes are there?", str(len(objs)), answer_type, kind
    if kind == "color_of_shape":
        return f"what color is the {obj['shape']}?", obj["color"], answer_type, kind
    if kind == "shape_of_color":
        return f"what shape is {obj['color']}?", obj["shape"], answer_type, kind
    if kind == "position_of_shape":
        return f"where is the {obj['shape']}?", obj["position"], answer_type, kind
    if kind == "background":
        return "what is the background?", meta["background"], answer_type, kind
    raise DataFormatError(f"unknown question kind {kind!r}", f"use one of {QUESTION_KINDS}")


def dataset(
    n: int,
    style: str = "generic",
    task: str = "caption",
    seed: int = 0,
    answer_type: str | None = None,
    question_kind: str | None = None,
) -> list[Sample]:
    """``n`` samples of the shapes world: captions in a style, or VQA questions (optionally of one answer type).

    Sample ``i``'s image depends only on ``(seed, i)``. Captions all use the same prompt (``CAPTION_PROMPT``);
    the style only changes the reference answer. Ids are ``shapes/{task}/{style}/s{seed}/{i}``; for VQA the
    style slot is the answer-type filter (``all``, ``yesno``, ``number``, ``other``) or the question kind.
    """
    from nnshift.arguments import check_int, check_str

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataFormatError(f"n must be an integer >= 0, got {n!r}", "ask for a non-negative number of samples")
    check_int(seed, "seed", 0), check_str(style, "style"), check_str(task, "task")
    check_str(answer_type, "answer_type", optional=True), check_str(question_kind, "question_kind", optional=True)
    if task not in TASKS:
        raise DataFormatError(f"unknown task {task!r}", f"use one of {list(TASKS)}")
    if task == "caption" and style not in STYLES:
        raise DataFormatError(f"unknown caption style {style!r}", f"use one of {list(STYLES)}")
    if answer_type is not None and answer_type not in ANSWER_TYPES:
        raise DataFormatError(f"unknown answer type {answer_type!r}", f"use one of {list(ANSWER_TYPES)}")
    if question_kind is not None and not any(question_kind in ks for ks in QUESTION_KINDS.values()):
        raise DataFormatError(f"unknown question kind {question_kind!r}", f"use one of {QUESTION_KINDS}")
    out: list[Sample] = []
    for i in range(n):
        scene = random_scene(np.random.default_rng([seed, i]))
        image = render(scene)
        meta: dict[str, Any] = {
            "objects": [dict(o) for o in scene["objects"]],
            "background": scene["background"],
            "count": scene["count"],
            "task": task,
        }
        if task == "caption":
            text_rng = np.random.default_rng([seed, i, _STYLE_CODE[style]])
            meta["style"] = style
            out.append(
                Sample(
                    f"shapes/caption/{style}/s{seed}/{i}", CAPTION_PROMPT, image, [caption(meta, style, text_rng)], meta
                )
            )
        else:
            label = question_kind or (answer_type or "all").replace("/", "")
            text_rng = np.random.default_rng([seed, i, _TYPE_CODE[answer_type or "all"]])
            q, a, atype, kind = question(meta, text_rng, answer_type, question_kind)
            meta.update(style="vqa", answer_type=atype, question_kind=kind)
            out.append(Sample(f"shapes/vqa/{label}/s{seed}/{i}", q, image, [a], meta))
    return out


def _image_ids(samples: Iterable[Sample]) -> dict[str, int]:
    """One integer image id per distinct image (keyed by the sample id without its task and style)."""
    ids: dict[str, int] = {}
    for s in samples:
        key = _image_key(s)
        if key not in ids:
            ids[key] = len(ids) + 1
    return ids


def _image_key(s: Sample) -> str:
    """Samples of the same seed and index share their image."""
    parts = s.id.split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else s.id


def _save_images(samples: Sequence[Sample], image_ids: dict[str, int], image_dir: Path, prefix: str) -> dict[int, str]:
    """Write each distinct image once as a COCO-style file name; return image id -> file name."""
    image_dir.mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}
    for s in samples:
        iid = image_ids[_image_key(s)]
        if iid in names:
            continue
        name = f"{prefix}_{iid:012d}.png"
        img = s.load_image()
        if img is None:
            raise DataFormatError(f"sample {s.id!r} has no image", "only samples with images can be written")
        img.save(image_dir / name)
        names[iid] = name
    return names


def write_coco_captions(
    samples: Sequence[Sample], json_path: str | Path, image_dir: str | Path, prefix: str = "COCO_shapes"
) -> Path:
    """Write samples as an official COCO captions file (images + annotations) and their images; return the JSON path."""
    json_path, image_dir = Path(json_path), Path(image_dir)
    image_ids = _image_ids(samples)
    names = _save_images(samples, image_ids, image_dir, prefix)
    annotations: list[dict[str, Any]] = []
    for s in samples:
        for cap in s.answers:
            annotations.append({"image_id": image_ids[_image_key(s)], "id": len(annotations) + 1, "caption": cap})
    doc = {
        "info": {"description": "nnshift shapes world captions"},
        "images": [{"id": iid, "file_name": names[iid], "width": IMAGE_SIZE, "height": IMAGE_SIZE} for iid in names],
        "annotations": annotations,
    }
    atomic_write_bytes(json_path, json.dumps(doc, indent=1).encode())
    return json_path


def write_vqav2(
    samples: Sequence[Sample],
    questions_json: str | Path,
    annotations_json: str | Path,
    image_dir: str | Path,
    prefix: str = "COCO_shapes",
) -> tuple[Path, Path]:
    """Write VQA samples in the VQAv2 questions + annotations format and their images; return both JSON paths."""
    questions_json, annotations_json, image_dir = Path(questions_json), Path(annotations_json), Path(image_dir)
    image_ids = _image_ids(samples)
    _save_images(samples, image_ids, image_dir, prefix)
    questions, annotations = [], []
    for qid, s in enumerate(samples, start=1):
        if not s.answers:
            raise DataFormatError(f"sample {s.id!r} has no answer", "VQAv2 annotations need at least one answer")
        iid = image_ids[_image_key(s)]
        questions.append({"image_id": iid, "question": s.prompt, "question_id": qid})
        annotations.append(
            {
                "question_id": qid,
                "image_id": iid,
                "question_type": s.meta.get("question_kind", ""),
                "answer_type": s.meta.get("answer_type", "other"),
                "multiple_choice_answer": s.answers[0],
                "answers": [
                    {"answer": s.answers[j % len(s.answers)], "answer_confidence": "yes", "answer_id": j + 1}
                    for j in range(10)
                ],
            }
        )
    atomic_write_bytes(questions_json, json.dumps({"questions": questions}).encode())
    atomic_write_bytes(annotations_json, json.dumps({"annotations": annotations}).encode())
    return questions_json, annotations_json
