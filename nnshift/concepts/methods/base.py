"""What every concept method shares: the `ConceptMethod` ABC, typed configs, `FitResult`, the registry.

A method turns an ``[M, D]`` float32 matrix ``Z`` into concepts ``U`` (``[K, D]``) and knows how to
compute the activations ``V`` (``[M, K]``) of new rows given ``U``. Its parameters are a frozen
`MethodConfig` dataclass (``config_class``), built from the keyword arguments of ``ns.concepts.fit``
and stored in a saved dictionary as a plain JSON dict (`MethodConfig.to_params`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor

from nnshift.concepts import _solvers as S
from nnshift.errors import ConceptError

__all__ = [
    "Codes",
    "Concepts",
    "MethodConfig",
    "Rows",
    "State",
    "ConceptMethod",
    "FitResult",
    "register_method",
    "get_method",
    "available_methods",
    "tensor_record",
]

_TENSOR_RECORD = re.compile(r"^<tensor \[[0-9, ]*\]>$")


def tensor_record(value: Any) -> Any:
    """``value`` as it is written to JSON: a tensor becomes ``"<tensor [shape]>"``, the rest is unchanged."""
    return f"<tensor {list(value.shape)}>" if isinstance(value, Tensor) else value


def is_tensor_record(value: Any) -> bool:
    """Whether ``value`` is the JSON record of a tensor given at fit time (see `tensor_record`)."""
    return isinstance(value, str) and bool(_TENSOR_RECORD.match(value))


def check_int(name: str, value: Any, low: int) -> int:
    """``value`` if it is an integer ``>= low``, else `ConceptError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConceptError(f"{name} must be an integer >= {low}, got {value!r}", f"pass {name}={max(low, 1)} or more")
    return value


def check_number(name: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a positive (or non-negative) number, else `ConceptError`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConceptError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}",
            f"pass a float for {name}",
        )
    return float(value)


def check_init(method: str, value: Any, choices: tuple[str, ...], shape: str) -> None:
    """``value`` is one of ``choices``, a tensor, or the record of a tensor given at fit time."""
    if isinstance(value, Tensor) or is_tensor_record(value) or value in choices:
        return
    raise ConceptError(f"unknown {method} init {value!r}", f"use {', '.join(map(repr, choices))} or a {shape} tensor")


def init_tensor(name: str, value: Any, shape: tuple[int, int], z: Rows) -> Float[Tensor, "a b"]:
    """A given init tensor, checked (shape, finite) and moved to ``z``'s device as float32."""
    if not isinstance(value, Tensor):
        raise ConceptError(
            f"{name}={value!r} is the record of a tensor given at fit time, not the tensor",
            "pass the init tensor itself, or a string init",
        )
    if tuple(value.shape) != shape:
        raise ConceptError(
            f"{name} tensor has shape {tuple(value.shape)}, expected {shape}",
            "pass an init tensor of the documented shape, or a string init",
        )
    t = value.to(device=z.device, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ConceptError(f"{name} tensor contains NaN or Inf", "pass a finite init tensor")
    return t


def rel_error(z: Rows, zhat: Float[Tensor, "m d"]) -> float:
    """``‖Z - Ẑ‖_F / ‖Z‖_F`` in float64."""
    num = S.sqnorm(z - zhat)
    den = S.sqnorm(z)
    return (num / den) ** 0.5 if den > 0 else 0.0


_Cfg = TypeVar("_Cfg", bound="MethodConfig")


@dataclass(frozen=True)
class MethodConfig:
    """Base of the methods' frozen, typed configs; subclasses validate their fields in ``__post_init__``."""

    @classmethod
    def from_params(cls: type[_Cfg], params: Mapping[str, Any], method: str = "") -> _Cfg:
        """The config from a params dict (keyword arguments of ``fit``, or a saved dictionary's ``params``)."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ConceptError(
                f"method {method or cls.__name__!r} has no parameter(s) {unknown}", f"valid parameters: {sorted(names)}"
            )
        return cls(**params)

    def to_params(self) -> dict[str, Any]:
        """The JSON-safe dict a saved dictionary stores (tensors recorded as ``"<tensor [..]>"``)."""
        return {f.name: tensor_record(getattr(self, f.name)) for f in fields(self)}

    def replace(self: _Cfg, **changes: Any) -> _Cfg:
        """A copy with ``changes`` applied (validated again)."""
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


@dataclass
class FitResult:
    """What a method's `fit` returns: concepts, training codes, resolved params, diagnostics, extra tensors.

    ``params`` is the resolved config as a JSON-safe dict (``config.to_params()``); a plain dict from
    methods written without a config class.
    """

    concepts: Float[Tensor, "k d"]
    codes: Float[Tensor, "m k"] | None
    params: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Tensor] = field(default_factory=dict)


C = TypeVar("C")

#: the shapes of the method interface: concepts ``U`` ``[K, D]``, rows ``Z`` ``[M, D]``, codes ``V`` ``[M, K]``, and
#: the extra tensors a method keeps (`ConceptMethod.state_keys`)
Concepts: TypeAlias = Float[Tensor, "k d"]
Rows: TypeAlias = Float[Tensor, "m d"]
Codes: TypeAlias = Float[Tensor, "m k"]
State: TypeAlias = dict[str, Tensor]


class ConceptMethod(ABC, Generic[C]):
    """A dictionary-learning method: ``fit`` learns concepts, ``transform`` gives activations of new rows.

    ``config_class`` is the method's frozen `MethodConfig` dataclass (its fields and defaults are the
    accepted parameters; ``defaults`` is derived from it). A method without one lists its parameters
    in ``defaults`` and receives a plain dict. ``state_keys`` names the extra tensors (e.g. PCA's
    mean) that `transform` needs and that `ConceptDictionary` saves; ``origin`` names the one of them (if any)
    that is the data's origin: `centred` subtracts it before coding and `reconstruct` adds it back.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig] | None] = None
    defaults: ClassVar[dict[str, Any]] = {}
    state_keys: ClassVar[tuple[str, ...]] = ()
    origin: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.config_class is not None:
            cls.defaults = cls.config_class().to_params()

    def config(self, params: Mapping[str, Any] | C) -> C:
        """The method's config from ``params`` (defaults filled in, validated); a config is returned as is."""
        if self.config_class is None:
            if isinstance(params, Mapping):
                return self.resolve_params(dict(params))  # type: ignore[return-value]
            return params
        if isinstance(params, self.config_class):
            return params
        if not isinstance(params, Mapping):
            raise ConceptError(
                f"{self.name} expects a {self.config_class.__name__} or a dict, got {type(params).__name__}",
                f"pass keyword parameters, or a {self.config_class.__name__}",
            )
        return self.config_class.from_params(params, self.name)  # type: ignore[return-value]

    def params_of(self, config: C) -> dict[str, Any]:
        """The JSON-safe params dict of ``config`` (what a saved dictionary stores)."""
        if isinstance(config, MethodConfig):
            return config.to_params()
        return {k: tensor_record(v) for k, v in dict(config).items()}  # type: ignore[call-overload]

    def resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``params`` as a dict; unknown names raise `ConceptError`."""
        if self.config_class is not None:
            cfg = self.config_class.from_params(params, self.name)
            return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        unknown = sorted(set(params) - set(self.defaults) - set(self.state_keys))
        if unknown:
            raise ConceptError(
                f"method {self.name!r} has no parameter(s) {unknown}",
                f"valid parameters: {sorted(self.defaults)}",
            )
        return {**self.defaults, **params}

    @abstractmethod
    def fit(self, z: Rows, k: int, seed: int, params: C | Mapping[str, Any]) -> FitResult:
        """Learn ``k`` concepts from ``z`` (float32, finite, ``k <= M`` already checked)."""

    @abstractmethod
    def transform(self, concepts: Concepts, z: Rows, params: C | Mapping[str, Any], state: State) -> Codes:
        """Activations of the rows of ``z`` on ``concepts``."""

    def reconstruct(self, concepts: Concepts, codes: Codes, params: C | Mapping[str, Any], state: State) -> Rows:
        """Rows rebuilt from their activations: ``V @ U``, plus the ``origin`` state (if any, e.g. PCA's mean)."""
        out = codes @ concepts
        off = state.get(self.origin) if self.origin else None
        return out + off if off is not None else out

    def centred(self, z: Rows, state: State) -> Rows:
        """``z`` minus the ``origin`` state (unchanged without one, e.g. for given concepts without a mean)."""
        off = state.get(self.origin) if self.origin else None
        return z - off if off is not None else z

    def scores(self, codes: Codes, params: C | Mapping[str, Any]) -> Codes:
        """How strongly each row expresses each concept, for assignment and top samples (default ``|v|``)."""
        return codes.abs()

    def check_concepts(self, concepts: Concepts, params: C | Mapping[str, Any]) -> None:
        """Validate user-given concepts for `ConceptDictionary.from_concepts` (default: nothing)."""


# --------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, ConceptMethod[Any]] = {}


def register_method(method: ConceptMethod[Any], name: str | None = None, overwrite: bool = False) -> ConceptMethod[Any]:
    """Make ``method`` available to `fit` under ``name`` (default ``method.name``)."""
    if not isinstance(method, ConceptMethod):
        raise ConceptError(
            f"register_method expects a ConceptMethod instance, got {type(method).__name__}",
            "subclass nnshift.concepts.ConceptMethod and pass an instance",
        )
    key = name or method.name
    if not key:
        raise ConceptError("a concept method needs a name", "set the class attribute `name` or pass name=")
    if key in _REGISTRY and not overwrite:
        raise ConceptError(f"a concept method named {key!r} is already registered", "pass overwrite=True to replace it")
    _REGISTRY[key] = method
    return method


def get_method(name: str) -> ConceptMethod[Any]:
    """The registered method called ``name``."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConceptError(
            f"unknown concept method {name!r}",
            f"use one of {available_methods()}, or register yours with nnshift.concepts.register_method",
        ) from None


def available_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)
