"""Server-side shims that let ndif 0.1.2 serve a model on a CPU-only machine with nnsight 0.8.1.

Imported by the Ray workers of the local test server (tests/ndif/local_server.py puts this folder on
their PYTHONPATH and selects the classes below through NDIF_CONTROLLER_IMPORT_PATH and
NDIF_MODEL_IMPORT_PATH). It is test infrastructure, not part of nnshift; nothing here runs on the client.

* ``CPUModelActor``: ndif ships only a CUDA model actor (``load_from_disk`` and ``cleanup`` call
  ``torch.cuda.*`` and reject any tensor off CUDA). This subclass loads the model on the CPU and keeps
  everything else (request execution, responses over Redis, timeouts) as ndif ships it.
* ``ControllerActor``: ndif's controller sizes a model with ``Remotable.describe_checkpoint(key, dtype,
  trust_remote_code=...)`` and ``Remotable.max_tp_size(key, trust_remote_code=...)``, which nnsight 0.8.1
  does not accept, so every on-demand deploy fails. The shim adapts the signatures and, for a local folder
  the Hub cannot describe, counts the parameters from the safetensors headers.
"""

from __future__ import annotations

import gc
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

import ray
from ndif.services.ray.deployments.controller.controller import _ControllerActor
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel

__all__ = ["CPUModelActor", "CPUModelDeployment", "ControllerActor", "apply"]


def _local_folder_info(model_key: str, dtype: str) -> Any:
    """A CheckpointInfo for a key whose repo_id is a local folder (None when it is not one)."""
    from nnsight.modeling.mixins.remotable import CheckpointInfo, bytes_per_element
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        repo = json.loads(model_key.split(":", 1)[1]).get("repo_id")
    except (IndexError, ValueError, AttributeError):
        return None
    if not repo or not os.path.isdir(repo):
        return None
    n = 0
    for file in sorted(Path(repo).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                n += math.prod(handle.get_slice(name).get_shape())
    if n == 0:
        return None
    return CheckpointInfo(
        size_bytes=math.ceil(n * bytes_per_element(dtype)),
        n_params=n,
        config=AutoConfig.from_pretrained(repo),
        revision=None,
    )


def apply() -> None:
    """Patch nnsight's Remotable sizing methods to accept ndif 0.1.2's ``trust_remote_code`` keyword."""
    from nnsight.modeling.mixins.remotable import Remotable

    describe = inspect.getattr_static(Remotable, "describe_checkpoint").__func__
    if not getattr(describe, "_nnshift_compat", False):
        takes_trc = "trust_remote_code" in inspect.signature(describe).parameters

        def describe_checkpoint(
            cls: Any, model_key: str, dtype: str, trust_remote_code: bool = False, **kw: Any
        ) -> Any:
            try:
                if takes_trc:
                    return describe(cls, model_key, dtype, trust_remote_code=trust_remote_code, **kw)
                return describe(cls, model_key, dtype, **kw)
            except Exception:
                info = _local_folder_info(model_key, dtype)
                if info is None:
                    raise
                return info

        describe_checkpoint._nnshift_compat = True  # type: ignore[attr-defined]
        Remotable.describe_checkpoint = classmethod(describe_checkpoint)  # type: ignore[method-assign,assignment]

    max_tp = inspect.getattr_static(Remotable, "max_tp_size").__func__
    if "trust_remote_code" not in inspect.signature(max_tp).parameters:

        def max_tp_size(cls: Any, model_key: str, trust_remote_code: bool = False, **kw: Any) -> Any:
            return max_tp(cls, model_key, **kw)

        max_tp_size._nnshift_compat = True  # type: ignore[attr-defined]
        Remotable.max_tp_size = classmethod(max_tp_size)  # type: ignore[method-assign,assignment]


class CPUModelDeployment(BaseModelDeployment):
    """ndif's model deployment with the CUDA-only load and cleanup replaced by CPU ones."""

    # to_cache / from_cache move weights GPU <-> CPU: meaningless here, so the controller evicts instead.
    CACHEABLE = False

    def load_from_disk(self) -> HuggingFaceModel:
        """Load the model named by the key on the CPU, in the deployment's dtype, without gradients."""
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, **self.kwargs)
        model._module.requires_grad_(False)
        return model

    def cleanup(self) -> None:
        """Reset the per-request state after a request (no CUDA calls)."""
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


@ray.remote(num_cpus=1, max_restarts=-1)
class CPUModelActor(CPUModelDeployment):
    """The Ray actor class selected with NDIF_MODEL_IMPORT_PATH=ndif_compat.CPUModelActor."""


class _CompatControllerActor(_ControllerActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Ray ships a @ray.remote class by value, so the patch must be applied in the controller's worker.
        apply()
        super().__init__(*args, **kwargs)


ControllerActor = ray.remote(num_cpus=1, num_gpus=0, max_restarts=-1, resources={"head": 1})(_CompatControllerActor)
