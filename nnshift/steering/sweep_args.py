"""The arguments of `sweep` / `calibrate`, checked before any model call and gathered in a `SweepPlan`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from nnshift.arguments import as_list, check_flag, check_samples
from nnshift.data import Sample
from nnshift.errors import ArgumentError, EmptyInputError, SteeringError
from nnshift.options import RunOptions
from nnshift.positions import Selector, as_selector
from nnshift.steering.patches import Patch, PatchSet
from nnshift.steering.targets import AnswerTypeTarget, CaptionStyle, Target, TargetAnswer, sample_task, sample_type
from nnshift.steering.vectors import SteeringVector

__all__ = ["SweepPlan", "check_alphas", "check_sweep_args"]


@dataclass
class SweepPlan:
    """A checked sweep: samples, ``keep``, one vector per layer, strengths, positions, baselines, what to measure."""

    target: Target
    samples: list[Sample]
    keep: list[Sample]
    vectors: dict[int, SteeringVector]
    layers: list[int]
    alphas: list[float]
    positions: Selector
    prompts: dict[str, str] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    fluency: bool = True
    steerability: bool = True
    margin_words: tuple[list[str], list[str]] | None = None
    edit: dict[str, Any] = field(default_factory=dict)  # a Patch's op / value / gate, kept at every grid point

    def patch(self, layer: int, alpha: float | Tensor, rows: Tensor | None = None) -> Patch:
        """The plan's patch at ``layer`` with strength ``alpha`` (and per-row switches), with its operator."""
        return Patch(self.vectors[layer], alpha, self.positions, layer=layer, rows=rows, **self.edit)

    def info(self, vlm: Any, opts: RunOptions) -> dict[str, Any]:
        """How the sweep was made (JSON-able): model, vectors, positions, grid, baselines, options, diagnostics."""
        vec = self.vectors[self.layers[0]] if self.layers else None
        diag = vec.info.get("diagnostics") if vec is not None else None
        return {
            "model": getattr(vlm, "name", None),
            "lora": getattr(vlm, "lora", None),
            "layers": list(self.layers),
            "alphas": list(self.alphas),
            "positions": self.positions.spec(),
            "op": self.edit.get("op", "add"),
            "value": self.edit.get("value"),
            "gate": None if self.edit.get("gate") is None else self.edit["gate"].spec(),
            "vectors": {
                str(k): {"method": v.method, "norm": v.norm, "layer": v.layer} for k, v in self.vectors.items()
            },
            "diagnostics": diag if isinstance(diag, dict) else {},
            "prompts": dict(self.prompts),
            "models": {k: getattr(m, "name", None) for k, m in self.models.items()},
            "margin_words": [list(w) for w in self.margin_words] if self.margin_words else None,
            "max_new_tokens": opts.max_new_tokens,
            "batch_size": opts.batch_size,
        }


def check_alphas(alphas: Any) -> list[float]:
    """A non-empty list of distinct finite numbers."""
    items = as_list(alphas)
    if items is None or not items:
        raise ArgumentError(
            f"alphas must be a non-empty list of numbers, got {alphas!r:.60}", "pass e.g. alphas=(0.5, 1.0)"
        )
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise ArgumentError(f"every alpha must be a finite number, got {a!r}", "pass e.g. alphas=(0.5, 1.0)")
        out.append(float(a))
    if len(set(out)) != len(out):
        raise ArgumentError(f"alphas repeat a value: {out}", "give each strength once")
    return out


def _layer_list(vlm: Any, layers: Any, default: list[int] | None) -> list[int]:
    if layers is None:
        if not default:
            raise SteeringError("the vector has no layer and no layers= were given", "pass layers=[...]")
        layers = default
    items = as_list(layers)
    if items is None or not items or not all(not isinstance(x, bool) and isinstance(x, int) for x in items):
        raise ArgumentError(f"layers must be a non-empty list of ints, got {layers!r:.60}", "pass e.g. layers=[2, 3]")
    out = [vlm.layer_index(x) for x in items]  # LayerOutOfRangeError names the valid range
    if len(set(out)) != len(out):
        raise ArgumentError(f"layers repeat a layer: {items}", "give each layer once")
    return out


def _vectors(vlm: Any, vop: Any, layers: Any, positions: Any) -> tuple[dict[int, SteeringVector], list[int], Selector]:
    """One vector per swept layer, the layers (0-based) and the positions."""
    if isinstance(vop, PatchSet):
        raise SteeringError("sweep() takes one Patch or vector, not a PatchSet", "pass one patch, or {layer: vector}")
    if isinstance(vop, Patch):
        if vop.batch_size is not None:
            raise SteeringError("the patch has per-sample alpha/rows", "sweep a patch with one alpha (it is replaced)")
        pos = as_selector(positions) if positions is not None else vop.positions
        found = _layer_list(vlm, layers, [vop.layer])
        return {layer: vop.vector for layer in found}, found, pos
    pos = as_selector(positions if positions is not None else "all")
    if isinstance(vop, SteeringVector):
        found = _layer_list(vlm, layers, None if vop.layer is None else [vop.layer])
        return {layer: vop for layer in found}, found, pos
    if isinstance(vop, Mapping) and vop and all(isinstance(v, SteeringVector) for v in vop.values()):
        keyed = {vlm.layer_index(k): v for k, v in vop.items()}
        found = _layer_list(vlm, layers, list(keyed))
        missing = [x for x in found if x not in keyed]
        if missing:
            raise SteeringError(f"no vector for layers {missing}", f"sweep layers among {sorted(keyed)}")
        return {x: keyed[x] for x in found}, found, pos
    raise ArgumentError(
        f"vector_or_patch must be a SteeringVector, a Patch or {{layer: SteeringVector}}, got {type(vop).__name__}",
        "pass e.g. ns.steering.coarse(source, target)",
    )


def _check_target(target: Any, samples: list[Sample], keep: list[Sample]) -> None:
    if not isinstance(target, (AnswerTypeTarget, TargetAnswer, CaptionStyle)):
        raise ArgumentError(
            f"target must be an AnswerTypeTarget, TargetAnswer or CaptionStyle, got {type(target).__name__}",
            "pass e.g. target=ns.steering.AnswerTypeTarget('yes/no', 'number')",
        )
    tasks = {sample_task(s) for s in samples}
    if target.task == "vqa" and "caption" in tasks:
        raise ArgumentError(f"{target.describe()} is a VQA target but some samples are captions", "pass VQA questions")
    if target.task == "caption" and tasks == {"vqa"} and all("answer_type" in s.meta for s in samples):
        raise ArgumentError(
            f"{target.describe()} is measured on captions but every sample is a VQA question",
            "pass caption samples, and the VQA questions whose accuracy must be kept as keep=",
        )
    if isinstance(target, AnswerTypeTarget) and not any(sample_type(s) in target.source for s in samples):
        raise EmptyInputError(
            f"no sample has a ground-truth answer type in {list(target.source)}", "pass questions of the source type"
        )
    bad = [s.id for s in keep if not s.answers]
    if bad:
        raise ArgumentError(
            f"keep samples without reference answers: {bad[:3]}", "keep samples whose answers (or captions) are known"
        )


def _check_named(value: Any, name: str, kind: type | tuple[type, ...], hint: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k for k in value):
        raise ArgumentError(f"{name} must be a dict name -> value, got {value!r:.60}", hint)
    bad = [k for k, v in value.items() if not isinstance(v, kind) or (isinstance(v, str) and not v.strip())]
    if bad:
        raise ArgumentError(f"{name}[{bad[0]!r}] has the wrong type or is empty", hint)
    return dict(value)


def _check_models(vlm: Any, models: Any) -> dict[str, Any]:
    out = _check_named(models, "models", object, "pass models={'fine-tune': ns.zoo.load('shapes-colors')}")
    for name, m in out.items():
        if not all(hasattr(m, a) for a in ("prepare", "decode", "tokenizer", "n_layers", "logit_lens")):
            raise ArgumentError(
                f"models[{name!r}] is not a loaded model", "pass models loaded with ns.load/ns.zoo.load"
            )
    reserved = {"unsteered"}
    if reserved & set(out):
        raise ArgumentError("a baseline may not be named 'unsteered'", "rename it")
    return out


def check_sweep_args(
    vlm: Any,
    vector_or_patch: Any,
    samples: Any,
    target: Any,
    alphas: Any,
    layers: Any,
    positions: Any,
    keep: Any,
    prompts: Any,
    models: Any,
    fluency: Any,
    steerability: Any,
) -> SweepPlan:
    """Every argument of `sweep` checked (types, ranges, consistency of target and samples); the plan."""
    main = check_samples(samples, "sweep()", unique=True)
    no_keep = keep is None or (isinstance(keep, (list, tuple)) and not keep)
    kept = [] if no_keep else check_samples(keep, "sweep(keep=...)", unique=True)
    clash = {s.id for s in main} & {s.id for s in kept}
    if clash:
        raise ArgumentError(
            f"samples and keep share ids {sorted(clash)[:3]}", "keep samples apart from the steered ones"
        )
    _check_target(target, main, kept)
    vals = check_alphas(alphas)
    vectors, found, pos = _vectors(vlm, vector_or_patch, layers, positions)
    edit = vector_or_patch._op_kwargs() if isinstance(vector_or_patch, Patch) else {}
    probe = PatchSet([Patch(vectors[x], 1.0, pos, layer=x, **edit) for x in found])
    probe.check(vlm.hidden_size, vlm.n_layers)
    prompt_map = _check_named(prompts, "prompts", str, "pass prompts={'prompt: number': 'Answer with a number.'}")
    if "unsteered" in prompt_map:
        raise ArgumentError("a baseline may not be named 'unsteered'", "rename it")
    model_map = _check_models(vlm, models)
    if set(prompt_map) & set(model_map):
        raise ArgumentError(f"prompts and models share names {sorted(set(prompt_map) & set(model_map))}", "rename one")
    return SweepPlan(
        target=target,
        samples=main,
        keep=kept,
        vectors=vectors,
        layers=found,
        alphas=vals,
        positions=pos,
        prompts=prompt_map,
        models=model_map,
        fluency=check_flag(fluency, "fluency"),
        steerability=check_flag(steerability, "steerability"),
        margin_words=target.margin_words(main),
        edit=edit,
    )
