"""salt's weights as GN2's parameters: the name of each of our parameters in salt's ``state_dict`` and the
map from its array (PyTorch's ``[out, in]``, the fused q/k/v projection, the reordered init-net inputs and
jet classes: see ``salt``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from .model import GN2
from .salt_config import SaltLayout


def _linear_prefixes(state_dict: Mapping, prefix: str) -> list[str]:
    """The Linear layers of a salt ``Dense`` at ``prefix`` (``...net.net``) in order: their indices in
    the Sequential shift with dropout, so they are read from the keys."""
    idx = {int(k[len(prefix) + 1 :].split(".")[0]) for k in state_dict if k.startswith(prefix + ".")}
    return [f"{prefix}.{i}" for i in sorted(idx)]


def _salt_param(
    path: tuple, state_dict: Mapping, layout: SaltLayout
) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """salt's state_dict key of our parameter at ``path`` and the map from its array to ours."""
    names = [str(p) for p in path]
    leaf = names[-1]

    def linear(key: str, rows: tuple[int, ...] = (), jet_inputs: int = 0):
        if leaf == "kernel":  # nn.Linear.weight is [out, in]
            return f"{key}.weight", lambda w: _reorder(w, rows, jet_inputs).T
        return f"{key}.bias", lambda w: w[list(rows)] if rows else w

    def dense_layer(module: str, i: int) -> str:
        layers = _linear_prefixes(state_dict, module)
        if i >= len(layers):
            raise KeyError(
                f"salt state_dict has {len(layers)} Linear layers under {module!r}; GN2 needs more"
            )
        return layers[i]

    match names:
        case ["init_net", "layers", i, _]:
            jet_inputs = layout.jet_inputs if i == "0" else 0
            return linear(dense_layer("init_nets.0.net.net", int(i)), jet_inputs=jet_inputs)
        case ["encoder", "layers", i, "attn", _]:
            return _attention(f"encoder.layers.{i}.attn.fn", leaf)
        case ["encoder", "layers", i, "ff", "up" | "down", _]:
            return linear(f"encoder.layers.{i}.dense.fn.{'in_proj' if names[4] == 'up' else 'out_proj'}")
        case ["encoder", "registers"]:
            return "encoder.registers", lambda w: w
        case ["encoder", "out_proj", _]:
            return linear("encoder.out_proj")
        case ["pool", "gate", _]:
            return linear("pool_net.gate_nn")
        case ["jet_head" | "origin_head" | "vertex_head", "layers", i, _]:
            role = names[0].removesuffix("_head")
            module = f"tasks.{layout.tasks[role]}.net.net"
            last = int(i) == len(_linear_prefixes(state_dict, module)) - 1
            return linear(
                dense_layer(module, int(i)), rows=layout.jet_order if role == "jet" and last else ()
            )
    raise KeyError(f"no salt name for parameter {'.'.join(names)}")


def _reorder(w: np.ndarray, rows: tuple[int, ...], jet_inputs: int) -> np.ndarray:
    """A PyTorch ``[out, in]`` weight with its output rows in our class order and, for the init net's
    first layer, its input columns moved from [jet, track] to [track, jet]."""
    if rows:
        w = w[list(rows)]
    if jet_inputs:
        w = np.concatenate([w[:, jet_inputs:], w[:, :jet_inputs]], axis=1)
    return w


def _attention(prefix: str, leaf: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    if leaf == "qkv_kernel":  # in_proj_weight [3E, E], rows (q|k|v, head, head_dim) -> [E, 3, H, D]
        return f"{prefix}.in_proj_weight", lambda w: w.T
    if leaf == "qkv_bias":
        return f"{prefix}.in_proj_bias", lambda w: w
    if leaf == "out_kernel":  # out_proj.weight [E_out, E_in], E_in = (head, head_dim) -> [H, D, E]
        return f"{prefix}.out_proj.weight", lambda w: w.T
    if leaf == "out_bias":
        return f"{prefix}.out_proj.bias", lambda w: w
    raise KeyError(f"no salt name for attention parameter {prefix}.{leaf}")


def _is_buffer(key: str) -> bool:
    """salt's buffers, not parameters: the registers' mask and the losses' class weights (which the config
    holds too)."""
    return key == "encoder.register_mask" or (key.startswith("tasks.") and ".loss." in key)


def convert_salt_state_dict(
    model: GN2, state_dict: Mapping[str, np.ndarray], layout: SaltLayout
) -> nnx.State:
    """``model``'s parameter state holding salt's arrays (``SaltModel.state_dict()`` as numpy; ``layout``
    from ``translate``), in this module's layout.

    Every parameter must be present with its shape and no key may be left over (salt's buffers aside):
    a KeyError or ValueError names the offending key, so a mismatched config never loads silently."""
    params = nnx.state(model, nnx.Param)
    flat, used = [], set()
    for path, var in nnx.to_flat_state(params):
        key, convert = _salt_param(path, state_dict, layout)
        if key not in state_dict:
            raise KeyError(f"salt state_dict has no {key!r} (for {'.'.join(map(str, path))})")
        value = convert(np.asarray(state_dict[key], np.float32))
        # attention arrays are split by head here: [E, 3E] -> [E, 3, H, D], [E_in, E] -> [H, D, E]
        if value.size != np.prod(var.shape) or (value.ndim == len(var.shape) and value.shape != var.shape):
            raise ValueError(
                f"salt {key!r}: shape {np.shape(state_dict[key])} does not fit {var.shape} "
                "(is the salt config the one the weights were trained with?)"
            )
        value = value.reshape(var.shape)
        flat.append((path, var.replace(jnp.asarray(value, var.dtype))))
        used.add(key)
    left = sorted(k for k in set(state_dict) - used if not _is_buffer(k))
    if left:
        more = " ..." if len(left) > 8 else ""
        raise KeyError(f"salt state_dict keys with no parameter here: {left[:8]}{more}")
    return nnx.from_flat_state(flat)


def load_salt_state_dict(model: GN2, state_dict: Mapping[str, np.ndarray], layout: SaltLayout) -> None:
    """Copies salt's weights (``SaltModel.state_dict()`` as numpy arrays) into ``model``."""
    nnx.update(model, convert_salt_state_dict(model, state_dict, layout))
