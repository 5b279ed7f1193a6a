"""Training of the shapes zoo: a short run from the same seed twice gives identical weights, and it learns."""

import json

import numpy as np
import torch
from safetensors.torch import load_file

from nnshift.zoo.build import NUM_IMAGE_TOKENS, build_processor
from nnshift.zoo.train import TrainConfig, _Encoder, make_batch, train_all


def test_batches_mask_everything_but_the_answer():
    proc = build_processor()
    enc = _Encoder(proc)
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


def _weights(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_same_seed_same_weights(tmp_path):
    cfg = TrainConfig(threads=torch.get_num_threads(), batch_size=16, base_steps=200, lora_steps=60, warmup=20)
    m1 = train_all(tmp_path / "a", cfg, log=None)
    m2 = train_all(tmp_path / "b", cfg, log=None)
    for name in ("shapes-base", "shapes-colors", "shapes-places"):
        w1, w2 = _weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)
        assert w1.keys() == w2.keys() and len(w1) > 0
        assert all(torch.equal(w1[k], w2[k]) for k in w1), name
    assert m1["stages"]["shapes-base"]["final_loss"] == m2["stages"]["shapes-base"]["final_loss"]
    # it learns: the loss falls well below its starting value
    stages = json.loads((tmp_path / "a" / "zoo.json").read_text())["stages"]
    assert stages["shapes-base"]["final_loss"] < 0.5 * stages["shapes-base"]["first_loss"]
    # a different seed gives different weights
    other = train_all(
        tmp_path / "c", TrainConfig(**{**cfg.__dict__, "seed": 1, "base_steps": 20, "lora_steps": 2}), None
    )
    assert other["config"]["seed"] == 1
    w3 = _weights(tmp_path / "c" / "shapes-base")
    head = next(k for k in w3 if k.endswith("lm_head.weight"))
    assert not torch.equal(w3[head], _weights(tmp_path / "a" / "shapes-base")[head])
