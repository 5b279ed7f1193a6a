"""The shapes world: seeded scenes, ground truth, captions, VQA answers, COCO / VQAv2 writers."""

import itertools
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnshift as ns
from nnshift.errors import DataFormatError
from nnshift.zoo import world
from nnshift.zoo.world import (
    BACKGROUNDS,
    CAPTION_PROMPT,
    COLORS,
    POSITIONS,
    QUESTION_KINDS,
    SHAPES,
    VOCABULARY,
    dataset,
    write_coco_captions,
    write_vqav2,
)

_RGB = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (30, 60, 235),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 205),
    "orange": (250, 135, 20),
}
_CELL = {"top": (0, 1), "left": (1, 0), "center": (1, 1), "right": (1, 2), "bottom": (2, 1)}


def _pixels(sample):
    return np.asarray(sample.image, dtype=np.int32)


def test_exposed_as_ns_zoo_dataset():
    s = ns.zoo.dataset(3, style="colors", task="caption", seed=5) if hasattr(ns, "zoo") else None
    if s is None:  # the package root re-export is the lead's; the submodule must work regardless
        import nnshift.zoo as zoo

        s = zoo.dataset(3, style="colors", task="caption", seed=5)
    assert len(s) == 3 and all(isinstance(x, ns.Sample) for x in s)


def test_deterministic_and_seed_dependent():
    a, b = dataset(20, seed=3), dataset(20, seed=3)
    c = dataset(20, seed=4)
    assert [x.answers for x in a] == [x.answers for x in b]
    assert all(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(a, b, strict=True))
    assert sum(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(a, c, strict=True)) == 0
    # sample i does not depend on n
    assert np.array_equal(_pixels(dataset(5, seed=3)[4]), _pixels(a[4]))


def test_styles_and_tasks_share_images_and_ids_are_unique():
    gen, col, vqa = dataset(10, "generic"), dataset(10, "colors"), dataset(10, task="vqa")
    for x, y, z in zip(gen, col, vqa, strict=True):
        assert np.array_equal(_pixels(x), _pixels(y)) and np.array_equal(_pixels(x), _pixels(z))
        assert x.meta["objects"] == y.meta["objects"] == z.meta["objects"]
    ids = [
        s.id for s in gen + col + vqa + dataset(10, "generic", seed=1) + dataset(10, task="vqa", answer_type="number")
    ]
    assert len(ids) == len(set(ids))
    assert gen[7].id == "shapes/caption/generic/s0/7" and vqa[2].id == "shapes/vqa/all/s0/2"


def test_ground_truth_is_consistent_and_rendered():
    for s in dataset(60, seed=11):
        m = s.meta
        objs = m["objects"]
        assert s.image.size == (48, 48) and s.image.mode == "RGB"
        assert 1 <= m["count"] == len(objs) <= 4 and m["background"] in BACKGROUNDS
        for key in ("shape", "color", "position"):
            assert len({o[key] for o in objs}) == len(objs)  # distinct per image
        assert [o["position"] for o in objs] == sorted((o["position"] for o in objs), key=POSITIONS.index)
        px = _pixels(s)
        for o in objs:  # the object's colour fills part of its cell (independent check of the renderer)
            r, c = _CELL[o["position"]]
            cell = px[r * 16 : r * 16 + 16, c * 16 : c * 16 + 16].reshape(-1, 3)
            assert (np.abs(cell - np.array(_RGB[o["color"]])).max(1) < 20).sum() >= 4, (s.id, o)
        for r, c in [(0, 0), (0, 2), (2, 0), (2, 2)]:  # corners are pure background: no shape colour there
            cell = px[r * 16 : r * 16 + 16, c * 16 : c * 16 + 16].reshape(-1, 3)
            for rgb in _RGB.values():
                assert (np.abs(cell - np.array(rgb)).max(1) < 20).sum() == 0


def test_big_shapes_cover_more_pixels_than_small_ones():
    big, small = [], []
    for s in dataset(80, seed=2):
        px = _pixels(s)
        for o in s.meta["objects"]:
            r, c = _CELL[o["position"]]
            cell = px[r * 16 : r * 16 + 16, c * 16 : c * 16 + 16].reshape(-1, 3)
            n = int((np.abs(cell - np.array(_RGB[o["color"]])).max(1) < 30).sum())
            (big if o["size"] == "big" else small).append(n)
    assert min(big) > max(small)


def test_captions_follow_their_style():
    for style in ("generic", "colors", "places"):
        for s in dataset(50, style=style, seed=7):
            cap = s.answers[0]
            w = re.findall(r"[a-z0-9]+", cap)
            assert s.prompt == CAPTION_PROMPT and s.meta["style"] == style and s.meta["task"] == "caption"
            assert cap == cap.lower() and set(w) <= set(VOCABULARY)
            shapes_named = [x for x in w if x in SHAPES]
            # every shape, in the fixed order of SHAPES (circle first)
            assert shapes_named == sorted((o["shape"] for o in s.meta["objects"]), key=SHAPES.index)
            pairs = set(itertools.pairwise(w))
            if style == "colors":
                assert all((o["color"], o["shape"]) in pairs for o in s.meta["objects"])
            if style in ("generic", "colors"):
                assert not set(w) & set(BACKGROUNDS)
            if style == "places":
                assert not set(w) & set(COLORS)
                assert {b for b in BACKGROUNDS if b in w} == {s.meta["background"]}
                assert all(o["position"] in w for o in s.meta["objects"])


def test_generic_captions_name_colours_sometimes():
    objs = named = 0
    for s in dataset(300, seed=1):
        w = s.answers[0].split()
        for o in s.meta["objects"]:
            objs += 1
            named += f"{o['color']} {o['shape']}" in s.answers[0]
        assert all(c not in w or any(o["color"] == c for o in s.meta["objects"]) for c in COLORS)
    assert 0.2 < named / objs < 0.4


def _recompute(s):
    """The answer to a question, computed independently from the ground truth."""
    q, objs = s.prompt, s.meta["objects"]
    by_shape = {o["shape"]: o for o in objs}
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q):
        return "yes" if any(o["color"] == m[1] and o["shape"] == m[2] for o in objs) else "no"
    if m := re.fullmatch(r"is there an? (\w+)\?", q):
        return "yes" if m[1] in by_shape else "no"
    if q == "how many shapes are there?":
        return str(len(objs))
    if m := re.fullmatch(r"what color is the (\w+)\?", q):
        return by_shape[m[1]]["color"]
    if m := re.fullmatch(r"what shape is (\w+)\?", q):
        return next(o["shape"] for o in objs if o["color"] == m[1])
    if m := re.fullmatch(r"where is the (\w+)\?", q):
        return by_shape[m[1]]["position"]
    if q == "what is the background?":
        return s.meta["background"]
    raise AssertionError(q)


def test_vqa_answers_are_right_and_balanced():
    samples = dataset(600, task="vqa", seed=9)
    types = [s.meta["answer_type"] for s in samples]
    for t in ("yes/no", "number", "other"):
        assert 0.25 < types.count(t) / len(types) < 0.42
    for s in samples:
        assert len(s.answers) == 1 and s.answers[0] == _recompute(s)
        assert s.meta["question_kind"] in QUESTION_KINDS[s.meta["answer_type"]]
        assert len(s.answers[0].split()) == 1 and s.meta["task"] == "vqa"
    yes = [s.answers[0] == "yes" for s in samples if s.meta["answer_type"] == "yes/no"]
    assert 0.4 < np.mean(yes) < 0.6
    nums = {s.answers[0] for s in samples if s.meta["answer_type"] == "number"}
    assert nums == {"1", "2", "3", "4"}


def test_vqa_filters():
    for t in ("yes/no", "number", "other"):
        assert {s.meta["answer_type"] for s in dataset(30, task="vqa", answer_type=t)} == {t}
    s = dataset(10, task="vqa", question_kind="color_of_shape")
    assert {x.meta["question_kind"] for x in s} == {"color_of_shape"}
    assert all(x.answers[0] in COLORS for x in s)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"style": "fancy"},
        {"task": "detection"},
        {"task": "vqa", "answer_type": "maybe"},
        {"task": "vqa", "question_kind": "nope"},
        {"n": -1},
    ],
)
def test_bad_arguments_raise(kwargs):
    args = {"n": 2, **kwargs}
    with pytest.raises(DataFormatError) as e:
        dataset(**args)
    assert e.value.hint


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), i=st.integers(0, 10_000))
def test_any_scene_is_valid(seed, i):
    scene = world.random_scene(np.random.default_rng([seed, i]))
    assert 1 <= scene["count"] <= 4
    assert all(o["shape"] in SHAPES and o["color"] in COLORS for o in scene["objects"])
    img = world.render(scene)
    assert np.array_equal(np.asarray(img), np.asarray(world.render(scene)))
    for style in ("generic", "colors", "places"):
        cap = world.caption(scene, style, np.random.default_rng(0))
        assert set(re.findall(r"[a-z0-9]+", cap)) <= set(VOCABULARY)


def test_write_coco_captions(tmp_path):
    samples = dataset(6, "colors", seed=1) + dataset(6, "places", seed=1)
    path = write_coco_captions(samples, tmp_path / "captions.json", tmp_path / "images")
    doc = json.loads(path.read_text())
    assert len(doc["images"]) == 6  # both styles share the 6 images
    assert len(doc["annotations"]) == 12 and len({a["id"] for a in doc["annotations"]}) == 12
    files = {im["id"]: im["file_name"] for im in doc["images"]}
    for im in doc["images"]:
        assert re.fullmatch(r"COCO_shapes_\d{12}\.png", im["file_name"])
        assert (tmp_path / "images" / im["file_name"]).exists()
    by_image = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    for s in samples[:6]:
        img_id = next(k for k, v in by_image.items() if s.answers[0] in v)
        from PIL import Image

        with Image.open(tmp_path / "images" / files[img_id]) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), _pixels(s))
    reader = getattr(ns.data, "load_coco_captions", None)
    if reader is not None:
        back = reader(path, tmp_path / "images")
        assert sorted(c for x in back for c in x.answers) == sorted(c for x in samples for c in x.answers)


def test_write_vqav2(tmp_path):
    samples = dataset(12, task="vqa", seed=4)
    qpath, apath = write_vqav2(samples, tmp_path / "q.json", tmp_path / "a.json", tmp_path / "img")
    qs, ans = json.loads(qpath.read_text())["questions"], json.loads(apath.read_text())["annotations"]
    raw = [s.prompt.split("\n")[0] for s in samples]  # VQAv2 questions carry no answer-format suffix
    assert [q["question"] for q in qs] == raw
    assert [q["question_id"] for q in qs] == [a["question_id"] for a in ans]
    for s, q, a in zip(samples, qs, ans, strict=True):
        assert a["image_id"] == q["image_id"] and a["answer_type"] == s.meta["answer_type"]
        assert a["multiple_choice_answer"] == s.answers[0]
        assert len(a["answers"]) == 10 and {x["answer"] for x in a["answers"]} == {s.answers[0]}
    assert len(list((tmp_path / "img").glob("*.png"))) == 12
    reader = getattr(ns.data, "load_vqav2", None)
    if reader is not None:
        back = reader(qpath, apath, tmp_path / "img")
        assert sorted(x.prompt.split("\n")[0] for x in back) == sorted(raw)
        assert {x.meta["answer_type"] for x in back} == {s.meta["answer_type"] for s in samples}


def test_cell_words_describe_the_scene():
    scene = world.random_scene(np.random.default_rng([5, 5]))
    rows = world.cell_words(scene)
    assert len(rows) == 9 and all(len(r) == 4 for r in rows)
    filled = [r for r in rows if r[0] in SHAPES]
    assert len(filled) == scene["count"]
    for o in scene["objects"]:
        r, c = _CELL[o["position"]]
        assert rows[r * 3 + c] == [o["shape"], o["color"], o["size"], o["position"]]
    assert all(r == [scene["background"]] * 4 for r in rows if r[0] not in SHAPES)
