"""Capture on a tiny random LLaVA: equality with plain PyTorch hooks, resume, errors."""

import warnings

import pytest
import torch

import nnshift as ns
from nnshift import positions as P
from nnshift.capture import capture
from nnshift.errors import CorruptStoreError, LayerOutOfRangeError, StoreMismatchError, TokenOfInterestError
from nnshift.generation import generate
from nnshift.models import load
from nnshift.models.testing import build_tiny, tiny_image
from nnshift.store import ActivationStore, load_activations

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return load(build_tiny("llava", tmp_path_factory.mktemp("llava")))


@pytest.fixture(scope="module")
def samples():
    prompts = ["what color is the circle", "how many", "is there a red square on the grass", "what"]
    return [ns.Sample(id=f"s{i}", prompt=prompts[i % 4], image=tiny_image(i)) for i in range(10)]


def _hf_greedy_with_hook(vlm, inputs, layer, max_new_tokens):
    """Reference-style: plain HF generate, a forward hook copying every position at every step."""
    seen = []
    handle = vlm.layer_module(layer).register_forward_hook(
        lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out).detach().clone())
    )
    try:
        with torch.no_grad():
            out = vlm.hf.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=vlm.eos_token_ids,
                pad_token_id=vlm.pad_token_id,
            )
    finally:
        handle.remove()
    return out[:, inputs["input_ids"].shape[1] :], torch.cat(seen, dim=1)  # [b, P + steps - 1, d]


def test_last_prompt_equals_plain_forward_hook(vlm, samples):
    acts = capture(vlm, samples[:4], layer=1, at="last_prompt", batch_size=4, progress=False)
    inputs = vlm.prepare(samples[:4])
    seen = []
    h = vlm.layer_module(1).register_forward_hook(lambda _m, _i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        vlm.hf(**inputs)
    h.remove()
    assert acts.ids == ["s0", "s1", "s2", "s3"]
    assert torch.equal(acts.tensor, seen[0][:, -1, :].float())
    assert acts.info["layer"] == 1 and acts.info["versions"]["nnsight"]


def test_generation_and_toi_equal_hf_generate_with_hook(vlm, samples):
    batch = samples[:4]
    inputs = vlm.prepare(batch)
    gen, states = _hf_greedy_with_hook(vlm, inputs, -1, 6)
    answers = generate(vlm, batch, max_new_tokens=6, progress=False)
    assert answers == [
        vlm.decode(g[: next((i for i, t in enumerate(g) if t in vlm.eos_token_ids), len(g))]) for g in gen
    ]
    word = answers[0].split()[1]
    acts = capture(vlm, batch, layer=-1, at=P.token_of_interest(word), batch_size=4, max_new_tokens=6, progress=False)
    assert "s0" in acts.ids
    plen = inputs["input_ids"].shape[1]
    for row, sid in enumerate(acts.ids):
        b = int(sid[1:])
        k = acts.meta[row]["toi_step"]
        # the kept state predicts the token that starts the TOI word: last prompt position + k
        assert word in vlm.tokenizer.decode(gen[b, : k + 1]).split()
        assert word not in vlm.tokenizer.decode(gen[b, :k]).split()
        assert torch.equal(acts.tensor[row], states[b, plen - 1 + k].float())


def test_several_layers_one_pass_equal_separate(vlm, samples):
    both = capture(vlm, samples[:5], layer=[0, -1], at=P.generated(reduce="mean"), max_new_tokens=4, progress=False)
    one = capture(vlm, samples[:5], layer=0, at=P.generated(reduce="mean"), max_new_tokens=4, progress=False)
    assert set(both) == {0, 1}
    assert torch.equal(both[0].tensor, one.tensor) and both[0].ids == one.ids


def test_image_positions_one_row_each(vlm, samples):
    acts = capture(vlm, samples[:2], layer=0, at="image", progress=False)
    n_img = int(vlm.image_token_mask(vlm.prepare(samples[:1])["input_ids"]).sum())
    assert len(acts) == 2 * n_img and acts.ids[0].startswith("s0#")
    mean = capture(vlm, samples[:2], layer=0, at="image", reduce="mean", progress=False)
    assert torch.allclose(mean.tensor[0], acts.tensor[:n_img].mean(0), atol=1e-6)


def test_interrupted_capture_resumes_identically(vlm, samples, tmp_path, monkeypatch):
    sel = P.generated(reduce="mean")
    full = capture(vlm, samples, layer=-1, at=sel, batch_size=2, shard_size=2, max_new_tokens=4, progress=False)
    calls = {"n": 0}
    original = ActivationStore.append

    def failing(self, *a, **k):
        original(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("interrupted after the second shard")

    monkeypatch.setattr(ActivationStore, "append", failing)
    with pytest.raises(KeyboardInterrupt):
        capture(
            vlm,
            samples,
            layer=-1,
            at=sel,
            batch_size=2,
            shard_size=2,
            max_new_tokens=4,
            out=tmp_path / "c",
            progress=False,
        )
    monkeypatch.setattr(ActivationStore, "append", original)
    assert len(ActivationStore.open(tmp_path / "c").done_ids) == 4
    resumed = capture(
        vlm, samples, layer=-1, at=sel, batch_size=2, shard_size=2, max_new_tokens=4, out=tmp_path / "c", progress=False
    )
    assert resumed.ids == full.ids
    assert torch.equal(resumed.tensor, full.tensor)
    assert torch.equal(load_activations(tmp_path / "c").tensor, full.tensor)


def test_resume_with_other_layer_is_refused(vlm, samples, tmp_path):
    capture(vlm, samples[:2], layer=0, out=tmp_path / "s", progress=False)
    with pytest.raises(StoreMismatchError, match="layers"):
        capture(vlm, samples[:2], layer=1, out=tmp_path / "s", progress=False)


def test_corrupt_shard_is_named(vlm, samples, tmp_path):
    capture(vlm, samples[:2], layer=0, out=tmp_path / "s", progress=False)
    shard = tmp_path / "s" / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="shard-00000"):
        load_activations(tmp_path / "s")


def test_toi_never_produced(vlm, samples):
    with pytest.raises(TokenOfInterestError, match="never produced"):
        capture(vlm, samples[:3], layer=-1, at=P.token_of_interest("zebra"), max_new_tokens=3, progress=False)


def test_layer_out_of_range(vlm, samples):
    with pytest.raises(LayerOutOfRangeError, match=r"-2\.\.1"):
        capture(vlm, samples[:1], layer=2, progress=False)


# --------------------------------------------------------------------------- store key, validation, repair


def test_every_numbers_changing_setting_is_in_the_key(vlm, samples, tmp_path):
    kw = {"layer": 0, "progress": False}
    capture(vlm, samples[:3], at="generated", max_new_tokens=2, out=tmp_path / "g", **kw)
    with pytest.raises(StoreMismatchError, match="generation"):
        capture(vlm, samples[:3], at="generated", max_new_tokens=3, out=tmp_path / "g", **kw)
    capture(vlm, samples[:3], out=tmp_path / "s", **kw)
    cases = {
        "dataset": dict(samples=samples[1:4]),
        "reduce": dict(at="image", reduce="mean"),
        "dtype": dict(dtype=torch.float16),
    }
    for field, change in cases.items():
        args = {"samples": samples[:3], **change}
        with pytest.raises(StoreMismatchError, match=field):
            capture(vlm, args.pop("samples"), out=tmp_path / "s", **kw, **args)
    other_image = [ns.Sample(id=s.id, prompt=s.prompt, image=tiny_image(99)) for s in samples[:3]]
    with pytest.raises(StoreMismatchError, match="dataset"):
        capture(vlm, other_image, out=tmp_path / "s", **kw)
    p = vlm.hf.get_input_embeddings().weight
    saved = p.data.clone()
    state = {k: v.clone() for k, v in vlm.hf.state_dict().items()}
    try:
        with torch.no_grad():
            p.mul_(1.01)
        with pytest.raises(StoreMismatchError, match="weights"):
            capture(vlm, samples[:3], out=tmp_path / "s", **kw)
        with torch.no_grad():
            p.copy_(saved)
        vlm.hf.to(torch.bfloat16)
        with pytest.raises(StoreMismatchError, match="model_dtype"):
            capture(vlm, samples[:3], out=tmp_path / "s", **kw)
    finally:
        vlm.hf.to(torch.float32)
        vlm.hf.load_state_dict(state)
    template = vlm.processor.chat_template
    try:
        vlm.processor.chat_template = template + " "
        with pytest.raises(StoreMismatchError, match="processor"):
            capture(vlm, samples[:3], out=tmp_path / "s", **kw)
    finally:
        vlm.processor.chat_template = template
    again = capture(vlm, samples[:3], out=tmp_path / "s", **kw)  # the same setting resumes (nothing to do)
    assert again.ids == ["s0", "s1", "s2"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"layer": "12"}, "layer must be"),
        ({"layer": True}, "layer must be"),
        ({"layer": 1.0}, "layer must be"),
        ({"layer": []}, "empty"),
        ({"layer": [0, "1"]}, "layer must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"shard_size": 0}, "shard_size"),
        ({"reduce": "max"}, "unknown reduce"),
        ({"reduce": "mean", "at": P.token_of_interest("red")}, "token_of_interest"),
        ({"dtype": torch.int8}, "floating"),
        ({"dtype": "float32"}, "floating"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(vlm, samples, tmp_path, kw, match):
    """ArgumentError (called without the tests' run-time type checker, which meets annotation breaks first)."""
    import inspect

    from nnshift.errors import ArgumentError

    raw_capture = inspect.unwrap(capture)
    with pytest.raises(ArgumentError, match=match):
        raw_capture(vlm, samples[:2], out=tmp_path / "x", progress=False, **{"layer": 0, **kw})
    assert not (tmp_path / "x").exists()


def test_duplicate_ids_refused_and_generators_accepted(vlm, samples):
    from nnshift.errors import ArgumentError

    dup = [samples[0], samples[1], ns.Sample(id="s0", prompt="other")]
    with pytest.raises(ArgumentError, match=r"\['s0'\]"):
        capture(vlm, dup, layer=0, progress=False)
    import inspect

    with pytest.raises(ArgumentError, match="Sample"):
        inspect.unwrap(capture)(vlm, ["a prompt"], layer=0, progress=False)
    from_list = capture(vlm, samples[:3], layer=0, progress=False)
    from_gen = capture(vlm, (s for s in samples[:3]), layer=0, progress=False)
    assert from_gen.ids == from_list.ids and torch.equal(from_gen.tensor, from_list.tensor)
    assert [s.id for s in from_gen.samples] == ["s0", "s1", "s2"]


def test_capture_into_a_folder_holding_something_else(vlm, samples, tmp_path):
    from nnshift.errors import StoreError

    capture(vlm, samples[:2], layer=0, progress=False).save(tmp_path / "saved")
    with pytest.raises(StoreError, match="Activations"):
        capture(vlm, samples[:2], layer=0, out=tmp_path / "saved", progress=False)


def test_pair_and_select_on_multi_position_capture(vlm, samples):
    a = capture(vlm, samples[:3], layer=0, at="text", progress=False, batch_size=3)
    b = capture(vlm, samples[1:4], layer=0, at="text", progress=False, batch_size=3)
    assert "#" in a.ids[0] and a.samples is not None
    pa, pb = ns.pair(a, b, same_model_ok=True)  # one model on two sample sets: pairing only
    assert pa.ids == pb.ids and {i.split("#")[0] for i in pa.ids} == {"s1", "s2"}
    assert [s.id for s in pa.samples] == [i.rsplit("#", 1)[0] for i in pa.ids]
    assert torch.equal(pa.tensor[0], a.tensor[a.ids.index(pa.ids[0])])
    gen = capture(vlm, samples[:2], layer=0, at="generated", max_new_tokens=3, progress=False)
    gen.skipped = ["zz"]
    sub = gen.select([len(gen) - 1])
    assert sub.samples[0].id == sub.ids[0].split("#")[0] and sub.skipped == ["zz"]


def test_repair_then_resume_recaptures_exactly_the_missing_samples(vlm, samples, tmp_path):
    kw = {"layer": 0, "batch_size": 2, "shard_size": 2, "progress": False}
    full = capture(vlm, samples, **kw)
    capture(vlm, samples, out=tmp_path / "s", **kw)
    (tmp_path / "s" / "shard-00001.safetensors").unlink()
    bad = tmp_path / "s" / "shard-00003.safetensors"
    bad.write_bytes(bad.read_bytes()[:-1] + b"\0")
    with pytest.raises(CorruptStoreError, match="repair"):
        load_activations(tmp_path / "s")
    dropped = ns.repair_store(tmp_path / "s")
    assert len(dropped) == 2 and "missing" in dropped[0] and "checksum" in dropped[1]
    assert ns.verify_store(tmp_path / "s") == []
    assert ActivationStore.open(tmp_path / "s").done_ids == {"s0", "s1", "s4", "s5", "s8", "s9"}
    seen = []
    original = ActivationStore.append

    def spy(self, tensors, ids, *a, **k):
        seen.extend(ids)
        return original(self, tensors, ids, *a, **k)

    ActivationStore.append = spy
    try:
        resumed = capture(vlm, samples, out=tmp_path / "s", **kw)
    finally:
        ActivationStore.append = original
    assert sorted(seen) == ["s2", "s3", "s6", "s7"]
    order = [resumed.ids.index(i) for i in full.ids]
    assert sorted(resumed.ids) == sorted(full.ids) and len(set(resumed.ids)) == len(full.ids)
    assert torch.equal(resumed.tensor[order], full.tensor)
    files = sorted(p.name for p in (tmp_path / "s").glob("shard-*"))
    assert files == [f"shard-0000{i}.safetensors" for i in (0, 2, 4, 5, 6)]


def test_store_key_is_stable_across_processes(vlm, samples):
    """The key holds no memory addresses (a custom adapter function is named), so a new process can resume."""
    import dataclasses
    import json

    from nnshift.capture import _adapter_settings

    def my_messages(prompt, has_image):
        return []

    custom = dataclasses.replace(vlm.adapter, build_messages=my_messages)
    text = json.dumps(_adapter_settings(custom), default=str)
    assert "my_messages" in text and "0x" not in text and "notes" not in text


def test_lora_on_off_and_lora_weights_are_in_the_key(samples, tmp_path):
    from nnshift.models.testing import save_tiny_lora

    base = build_tiny("llava", tmp_path / "base")
    ft = load(base, lora=save_tiny_lora(base, tmp_path / "adapter"))
    kw = {"layer": 0, "progress": False, "out": tmp_path / "s"}
    on = capture(ft, samples[:2], **kw)
    assert on.info["lora"] and on.info["lora_weights"]
    with ft.lora_disabled(), pytest.raises(StoreMismatchError, match="lora"):
        capture(ft, samples[:2], **kw)
    with ft.lora_disabled():
        off = capture(ft, samples[:2], layer=0, progress=False)
    plain = capture(load(base), samples[:2], layer=0, progress=False)
    assert off.info["weights"] == plain.info["weights"] == on.info["weights"]  # base weights: adapter excluded
    assert off.info["lora"] is None and not torch.equal(off.tensor, on.tensor)
    b = next(p for n, p in ft.hf.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        b.mul_(2.0)
    with pytest.raises(StoreMismatchError, match="lora_weights"):
        capture(ft, samples[:2], **kw)


def test_fuzz_capture_arguments_give_a_result_or_an_nnshift_error(vlm, samples):
    """Property: any combination of argument values gives valid activations or an NnshiftError, nothing else."""
    import inspect

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from nnshift.errors import NnshiftError

    raw_capture = inspect.unwrap(capture)
    scalar = st.one_of(st.integers(-4, 4), st.booleans(), st.floats(-3, 3), st.text(max_size=3), st.none())
    layer = st.one_of(scalar, st.lists(st.one_of(st.integers(-3, 2), scalar), max_size=3))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        layer=layer,
        batch_size=st.one_of(st.integers(-2, 4), st.floats(0, 3), st.none()),
        reduce=st.sampled_from([None, "mean", "max", "", 1]),
        at=st.sampled_from(["last_prompt", "image", "text", "bogus", P.generated()]),
        dtype=st.sampled_from([torch.float32, torch.float16, torch.int8, torch.bool, "float32", None]),
        n=st.integers(0, 3),
    )
    def check(layer, batch_size, reduce, at, dtype, n):
        kw = {"layer": layer, "batch_size": batch_size, "reduce": reduce, "at": at, "dtype": dtype}
        try:
            out = raw_capture(vlm, samples[:n], max_new_tokens=2, progress=False, **kw)
        except NnshiftError as exc:
            assert exc.hint
            return
        for acts in out.values() if isinstance(out, dict) else [out]:
            assert acts.tensor.ndim == 2 and acts.tensor.dtype == dtype and len(acts.ids) == len(acts)

    check()
