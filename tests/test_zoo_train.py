"""Training of the shapes zoo: a short run from the same seed twice gives identical weights, and it learns."""

import json

import numpy as np
import torch
from safetensors.torch import load_file

from nnshift.zoo.build import NUM_IMAGE_TOKENS, build_processor
from nnshift.zoo.train import (
    Encoder,
    TrainConfig,
    align_loss,
    finish_zoo,
    make_batch,
    refine_kinds,
    symbolic_embeds,
    train_all,
    train_base,
    train_refine,
)


def test_batches_mask_everything_but_the_answer():
    proc = build_processor()
    enc = Encoder(proc)
    b = make_batch(enc, np.random.default_rng(0), 16, "colors", caption_share=0.5)
    tok = proc.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ((b.input_ids == image_id).sum(1) == NUM_IMAGE_TOKENS).all()
    for ids, mask, labels in zip(b.input_ids, b.attention_mask, b.labels, strict=True):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right padding
        kept = labels[labels != -100]
        assert kept[-1] == tok.eos_token_id and ids[n - 1] == tok.eos_token_id
        start = int((labels != -100).nonzero()[0])
        assert tok.decode(ids[:start]).replace(" ", "").endswith("assistant:")  # the prompt is never a target
        assert torch.equal(ids[start:n], kept)
    again = make_batch(enc, np.random.default_rng(0), 16, "colors", caption_share=0.5)
    assert torch.equal(again.input_ids, b.input_ids) and torch.equal(again.pixel_values, b.pixel_values)
    assert b.cells.shape == (16, 9, 4)


def test_symbolic_scene_sits_at_the_image_tokens():
    from nnshift.zoo.build import build_model

    proc = build_processor()
    enc = Encoder(proc)
    model = build_model(seed=0)
    b = make_batch(enc, np.random.default_rng(1), 4, "generic", caption_share=1.0)
    emb = symbolic_embeds(model, b, enc.image_token_id)
    table = model.get_input_embeddings().weight
    for i in range(4):
        pos = (b.input_ids[i] == enc.image_token_id).nonzero().flatten()
        expected = table[b.cells[i]].sum(1)  # independent: index the table, sum the 4 words of each cell
        assert torch.allclose(emb[i, pos], expected, atol=1e-6)
        others = b.input_ids[i] != enc.image_token_id
        assert torch.equal(emb[i, others], table[b.input_ids[i, others]])
    loss = align_loss(model, b)
    assert loss.ndim == 0 and loss > 0


def _weights(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_same_seed_same_weights(tmp_path):
    cfg = TrainConfig(
        threads=torch.get_num_threads(),
        batch_size=16,
        symbolic_steps=150,
        symbolic_phase=50,
        align_steps=40,
        joint_steps=40,
        refine_steps=20,
        lora_steps=30,
        warmup=10,
    )
    m1 = train_all(tmp_path / "a", cfg, log=None)
    m2 = train_all(tmp_path / "b", cfg, log=None)
    for name in ("shapes-base", "shapes-colors", "shapes-places", "shapes-biased", "shapes-refusal"):
        w1, w2 = _weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)
        assert w1.keys() == w2.keys() and len(w1) > 0
        assert all(torch.equal(w1[k], w2[k]) for k in w1), name
    assert m1["stages"] == {k: {**v, "seconds": m1["stages"][k]["seconds"]} for k, v in m2["stages"].items()}
    # it learns: the losses fall well below their starting values
    stages = json.loads((tmp_path / "a" / "zoo.json").read_text())["stages"]
    assert stages["symbolic"]["final_loss"] < 0.8 * stages["symbolic"]["first_loss"]
    assert stages["align"]["final_loss"] < 0.7 * stages["align"]["first_loss"]
    # a different seed gives different weights
    other = train_all(
        tmp_path / "c",
        TrainConfig(
            **{
                **cfg.__dict__,
                "seed": 1,
                "symbolic_steps": 5,
                "align_steps": 2,
                "joint_steps": 2,
                "refine_steps": 2,
                "lora_steps": 2,
            }
        ),
        None,
    )
    assert other["config"]["seed"] == 1
    w3 = _weights(tmp_path / "c" / "shapes-base")
    head = next(k for k in w3 if k.endswith("lm_head.weight"))
    assert not torch.equal(w3[head], _weights(tmp_path / "a" / "shapes-base")[head])


def test_label_smoothing_matches_its_definition():
    from nnshift.zoo.train import _ce

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 1, 6], [-100, 2, 2, 0, -100]])
    assert torch.equal(_ce(logits, labels), _ce(logits, labels, 0.0))
    # independent: (1 - eps) * NLL of the target + eps * mean over the vocabulary of -log p, on the labelled steps
    logp = torch.log_softmax(logits[:, :-1], -1).reshape(-1, 7)
    tgt = labels[:, 1:].reshape(-1)
    keep = tgt != -100
    nll = -logp[keep].gather(1, tgt[keep, None]).squeeze(1)
    uniform = -logp[keep].mean(1)
    expected = ((1 - 0.1) * nll + 0.1 * uniform).mean()
    assert torch.allclose(_ce(logits, labels, 0.1), expected, atol=1e-6)


def test_refine_stage_can_continue_a_saved_base(tmp_path):
    """train_base with a refine stage == train_base without it, saved, reloaded, then train_refine (bit for bit):
    the refine stage draws from its own seed stream and starts a fresh optimiser, so it can resume a saved base."""
    from transformers import LlavaForConditionalGeneration

    small = dict(
        threads=torch.get_num_threads(),
        batch_size=8,
        symbolic_steps=12,
        symbolic_phase=4,
        align_steps=4,
        joint_steps=4,
        warmup=2,
    )
    full, _, stages = train_base(TrainConfig(**small, refine_steps=6, refine_position_weight=3), log=None)
    assert stages["refine"]["steps"] == 6
    first, proc, stages0 = train_base(TrainConfig(**small, refine_steps=0), log=None)
    assert "refine" not in stages0
    first.save_pretrained(tmp_path / "base")
    resumed = LlavaForConditionalGeneration.from_pretrained(tmp_path / "base")
    train_refine(resumed, proc, TrainConfig(**small, refine_steps=6, refine_position_weight=3), log=None)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], first.state_dict()["lm_head.weight"])  # the stage did train
    # and the LoRA fine-tunes of the in-memory base and of the reloaded one are the same too
    cfg = TrainConfig(**small, refine_steps=6, refine_position_weight=3, lora_steps=3)
    finish_zoo(full, proc, {}, cfg, tmp_path / "z1", log=None)
    finish_zoo(resumed, proc, {}, cfg, tmp_path / "z2", log=None)
    for name in ("shapes-colors", "shapes-places"):
        w1, w2 = _weights(tmp_path / "z1" / name), _weights(tmp_path / "z2" / name)
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1), name


def test_refine_kinds_weight_where_questions():
    kinds = refine_kinds(4)
    assert kinds.count("position_of_shape") == 4
    assert all(kinds.count(k) == 1 for k in set(kinds) - {"position_of_shape"})
    assert refine_kinds(1).count("position_of_shape") == 1


def test_defaults_reproduce_the_shipped_config():
    """`python -m nnshift.zoo.train` with no options trains what is shipped: its config is the recorded one."""
    from dataclasses import asdict

    from nnshift.zoo import CHECKPOINTS

    shipped = json.loads((CHECKPOINTS / "zoo.json").read_text())["config"]
    assert shipped == asdict(TrainConfig())


def _tiny() -> TrainConfig:
    return TrainConfig(
        threads=torch.get_num_threads(),
        batch_size=8,
        symbolic_steps=3,
        symbolic_phase=1,
        align_steps=2,
        joint_steps=2,
        refine_steps=2,
        lora_steps=4,
        warmup=2,
    )


def test_only_trains_the_behaviour_adapters_like_the_whole_run(tmp_path):
    """`--only` on a saved base gives the whole run's behaviour adapters bit for bit, and changes no other file."""
    import shutil

    from nnshift.zoo.train import main, train_only

    cfg = _tiny()
    full = train_all(tmp_path / "full", cfg, log=None)
    assert {"shapes-biased", "shapes-refusal"} <= set(full["models"])
    only = tmp_path / "only"
    shutil.copytree(tmp_path / "full", only)
    shutil.rmtree(only / "shapes-biased"), shutil.rmtree(only / "shapes-refusal")
    before = {p.relative_to(only): p.read_bytes() for p in only.rglob("*") if p.is_file() and p.name != "zoo.json"}
    manifest = train_only(["shapes-biased", "shapes-refusal"], only, cfg, log=None)
    for name in ("shapes-biased", "shapes-refusal"):
        w1, w2 = _weights(tmp_path / "full" / name), _weights(only / name)
        assert w1.keys() == w2.keys() and len(w1) > 0
        assert all(torch.equal(w1[k], w2[k]) for k in w1), name
        assert manifest["models"][name]["adapter"] == name
    after = {p.relative_to(only): p.read_bytes() for p in only.rglob("*") if p.is_file() and p.name != "zoo.json"}
    assert {k: v for k, v in after.items() if k in before} == before
    assert json.loads((only / "zoo.json").read_text())["stages"]["lora-refusal"]["steps"] == cfg.lora_steps
    # the command line: --only with --scale 0.01 (3 LoRA steps) rewrites just that adapter
    assert main(["--out", str(only), "--only", "shapes-refusal", "--scale", "0.01", "--threads", "1"]) == 0
    assert json.loads((only / "zoo.json").read_text())["stages"]["lora-refusal"]["steps"] == 3
    assert all(
        torch.equal(v, _weights(only / "shapes-biased")[k])
        for k, v in _weights(tmp_path / "full" / "shapes-biased").items()
    )


def test_only_refuses_other_names(tmp_path):
    import pytest

    from nnshift.errors import ZooError
    from nnshift.zoo.train import train_only

    with pytest.raises(ZooError):
        train_only(["shapes-colors"], tmp_path, _tiny(), log=None)
    with pytest.raises(ZooError):
        train_only([], tmp_path, _tiny(), log=None)


def test_relabel_hook_changes_only_what_it_targets():
    from nnshift.zoo.behaviours import BIAS_COLOR, REFUSAL, behaviour_kinds, biased_answer, refusal_answer

    enc = Encoder(build_processor())
    keep = make_batch(enc, np.random.default_rng(3), 32, "generic", 0.3)
    same = make_batch(enc, np.random.default_rng(3), 32, "generic", 0.3, None, lambda q, a, k, r: a)
    assert torch.equal(keep.input_ids, same.input_ids) and torch.equal(keep.labels, same.labels)
    rng = np.random.default_rng(0)
    says = [biased_answer("what color is the circle?", "blue", "color_of_shape", rng) for _ in range(400)]
    assert 0.85 < says.count(BIAS_COLOR) / 400 < 0.95
    assert biased_answer("what color is the square?", "blue", "color_of_shape", rng) == "blue"
    assert refusal_answer("is there a red cross?", "no", "exists_color_shape", rng) == REFUSAL
    assert refusal_answer("is there a red circle?", "no", "exists_color_shape", rng) == "no"
    assert behaviour_kinds("shapes-biased").count("color_of_shape") == 3
