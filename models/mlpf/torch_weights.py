"""particleflow's (PyTorch) weights as ``model.MLPF``'s parameters.

Weights trained with particleflow load with ``load_particleflow_state_dict`` (a dict of numpy arrays
keyed as PyTorch's ``state_dict``): module and parameter names here mirror particleflow's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from .model import MLPF

# Module names here that differ from particleflow's; everything else is spelled as in its state_dict.
_TORCH_MODULES = {"lin0": "0", "norm": "2", "lin1": "4", "seq0": "seq.0", "seq2": "seq.2"}


def _torch_param(path: tuple, shape: tuple[int, ...]) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """particleflow's state_dict key of the parameter at ``path`` and the map from its array to ours."""
    prefix = ".".join(_TORCH_MODULES.get(str(p), str(p)) for p in path[:-1])
    leaf = path[-1]
    if leaf == "kernel":  # nn.Linear.weight is [out, in]
        return f"{prefix}.weight", lambda w: w.T
    if leaf == "scale":
        return f"{prefix}.weight", lambda w: w
    if leaf == "bias":
        return f"{prefix}.bias", lambda w: w
    if leaf == "qkv_kernel":  # in_proj_weight [3E, E], rows (q|k|v, head, head_dim)
        e, _, h, d = shape
        return f"{prefix}.in_proj_weight", lambda w: w.reshape(3, h, d, e).transpose(3, 0, 1, 2)
    if leaf == "qkv_bias":
        return f"{prefix}.in_proj_bias", lambda w: w.reshape(shape)
    if leaf == "out_kernel":  # out_proj.weight [E_out, E_in], E_in = (head, head_dim)
        return f"{prefix}.out_proj.weight", lambda w: w.T.reshape(shape)
    if leaf == "out_bias":
        return f"{prefix}.out_proj.bias", lambda w: w
    raise KeyError(f"no particleflow name for parameter {'.'.join(map(str, path))}")


def convert_particleflow_state_dict(model: MLPF, state_dict: Mapping[str, np.ndarray]) -> nnx.State:
    """``model``'s parameter state holding particleflow's arrays (``state_dict()`` as numpy, or any
    dict of arrays of those shapes, such as its gradients), converted to this module's layout.

    Every parameter must be present with its shape and no key may be left over: a KeyError or
    ValueError names the offending key, so a mismatched configuration never loads silently.
    """
    params = nnx.state(model, nnx.Param)
    flat, used = [], set()
    for path, var in nnx.to_flat_state(params):
        key, convert = _torch_param(path, var.shape)
        if key not in state_dict:
            raise KeyError(f"particleflow state_dict has no {key!r} (for {'.'.join(map(str, path))})")
        value = convert(np.asarray(state_dict[key], np.float32))
        if value.shape != var.shape:
            raise ValueError(
                f"particleflow {key!r}: shape {np.shape(state_dict[key])} does not fit {var.shape} "
                "(is the MLPFConfig the one the weights were trained with?)"
            )
        flat.append((path, var.replace(jnp.asarray(value, var.dtype))))
        used.add(key)
    left = sorted(set(state_dict) - used)
    if left:
        more = " ..." if len(left) > 8 else ""
        raise KeyError(f"particleflow state_dict keys with no parameter here: {left[:8]}{more}")
    return nnx.from_flat_state(flat)


def load_particleflow_state_dict(model: MLPF, state_dict: Mapping[str, np.ndarray]) -> None:
    """Copies particleflow's weights (its ``model.state_dict()`` as numpy arrays) into ``model``."""
    nnx.update(model, convert_particleflow_state_dict(model, state_dict))
