from pathlib import Path

import pytest
from PIL import Image

import nnshift as ns
from nnshift import data
from nnshift.errors import DataFormatError, ImageReadError

FIX = Path(__file__).parent / "fixtures" / "coco"


def test_official_captions():
    s = data.load_coco_captions(FIX / "captions_val2014.json", FIX)
    assert [x.id for x in s] == ["coco/391895", "coco/522418"]
    assert s[0].answers == ["A man riding a red bike.", "A person on a bicycle."]
    assert s[0].load_image().getpixel((0, 0))[0] > 150
    assert s[0].prompt == data.CAPTION_PROMPT


def test_karpathy_split_and_limit():
    s = data.load_coco_captions(FIX / "dataset_coco.json", FIX, split="test")
    assert [x.id for x in s] == ["coco/391895"] and s[0].meta["split"] == "test"
    assert s[0].load_image().size == (8, 8)
    assert len(data.load_coco_captions(FIX / "dataset_coco.json", FIX, limit=1, seed=3)) == 1


def test_vqav2_answer_types():
    s = data.load_vqav2(
        FIX / "v2_OpenEnded_mscoco_val2014_questions.json", FIX / "v2_mscoco_val2014_annotations.json", FIX
    )
    assert [x.meta["answer_type"] for x in s] == ["yes/no", "number", "other"]
    assert s[1].answers[0] == "1" and s[1].prompt.startswith("How many people are there?")
    assert s[2].load_image() is not None
    only = data.load_vqav2(
        FIX / "v2_OpenEnded_mscoco_val2014_questions.json",
        FIX / "v2_mscoco_val2014_annotations.json",
        FIX,
        answer_types=["number"],
    )
    assert [x.id for x in only] == ["vqav2/391895001"]


def test_jsonl_roundtrip(tmp_path):
    s = data.load_jsonl(FIX / "samples.jsonl")
    assert s[0].answers == ["red"] and s[1].image is None and s[1].meta == {"k": 1}
    mem = ns.Sample(id="m/1", prompt="p", image=Image.new("RGB", (4, 4), (1, 2, 3)), answers=["a"])
    out = data.save_jsonl([*s, mem], tmp_path / "x.jsonl")
    back = data.load_samples(out)
    assert [x.id for x in back] == ["s1", "s2", "m/1"]
    assert back[2].load_image().getpixel((0, 0)) == (1, 2, 3)


def test_bad_files(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        data.load_coco_captions(tmp_path / "nope.json", tmp_path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataFormatError, match="neither"):
        data.load_coco_captions(tmp_path / "bad.json", tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(DataFormatError, match="line 1"):
        data.load_jsonl(tmp_path / "bad.jsonl")


def test_unreadable_image_names_sample(tmp_path):
    (tmp_path / "broken.jpg").write_text("not an image")
    s = ns.Sample(id="cat/7", prompt="p", image=tmp_path / "broken.jpg")
    with pytest.raises(ImageReadError, match="cat/7"):
        s.load_image()


def test_limit_zero_means_no_samples_in_every_reader():
    q, a = FIX / "v2_OpenEnded_mscoco_val2014_questions.json", FIX / "v2_mscoco_val2014_annotations.json"
    assert data.load_jsonl(FIX / "samples.jsonl", limit=0) == []
    assert data.load_samples(FIX / "samples.jsonl", limit=0) == []
    assert data.load_coco_captions(FIX / "captions_val2014.json", FIX, limit=0) == []
    assert data.load_vqav2(q, a, FIX, limit=0) == []
    assert len(data.load_jsonl(FIX / "samples.jsonl", limit=1)) == 1
    import inspect

    # unwrapped: the tests' run-time type checker would catch 1.5 first
    load_jsonl, load_vqav2 = inspect.unwrap(data.load_jsonl), inspect.unwrap(data.load_vqav2)
    for bad in (-1, 1.5, True):
        with pytest.raises(DataFormatError, match="limit"):
            load_jsonl(FIX / "samples.jsonl", limit=bad)
        with pytest.raises(DataFormatError, match="limit"):
            load_vqav2(q, a, FIX, limit=bad)


def test_jsonl_seed_shuffles_before_limit():
    all_ids = [s.id for s in data.load_jsonl(FIX / "samples.jsonl")]
    shuffled = [s.id for s in data.load_jsonl(FIX / "samples.jsonl", seed=1)]
    assert sorted(shuffled) == sorted(all_ids)
    assert [s.id for s in data.load_jsonl(FIX / "samples.jsonl", seed=1, limit=1)] == shuffled[:1]


def test_dataset_fingerprint_sees_ids_prompts_and_image_contents(tmp_path):
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    base = [ns.Sample(id="a", prompt="p", image=img), ns.Sample(id="b", prompt="q")]
    fp = data.dataset_fingerprint(base)
    assert fp == data.dataset_fingerprint([ns.Sample(id="a", prompt="p", image=img.copy()), base[1]])
    other_pixel = img.copy()
    other_pixel.putpixel((0, 0), (1, 2, 4))
    changes = [
        [ns.Sample(id="x", prompt="p", image=img), base[1]],
        [ns.Sample(id="a", prompt="p!", image=img), base[1]],
        [ns.Sample(id="a", prompt="p", image=other_pixel), base[1]],
        base[::-1],
        base[:1],
    ]
    assert len({fp, *(data.dataset_fingerprint(c) for c in changes)}) == 6
    f = tmp_path / "i.png"
    img.save(f)
    on_disk = data.dataset_fingerprint([ns.Sample(id="a", prompt="p", image=f)])
    other_pixel.save(f)
    assert data.dataset_fingerprint([ns.Sample(id="a", prompt="p", image=f)]) != on_disk
