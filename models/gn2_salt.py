"""salt's GN2 (ATLAS's PyTorch framework) as smilejax's GN2: its training YAML as a config, its weights
as parameters (``GN2`` / ``smilejax import salt``).

What is read:

* the checkpoint: a Lightning ``.ckpt`` of salt's ``ModelWrapper`` (``state_dict`` keys ``model.*`` and
  the input normalisation ``norm.<input>_means`` / ``_stds``) or a plain ``SaltModel.state_dict()``
  ``.pt``; both through ``torch_files`` (no torch);
* the config: salt's training YAML, best the resolved ``config.yaml`` salt writes next to its
  checkpoints (``logs/<run>/config.yaml``, with class names and class weights filled in). Without
  ``--config`` it is looked for next to the checkpoint and one folder up.

The config must describe a GN2: one constituent input (tracks) with the jet variables attached, one
init net, a ``Transformer`` (pre-LayerNorm, non-gated feed-forward, at least one register kept in the
pooling, an output projection and final norm), ``GlobalAttentionPooling``, and the jet classification,
track classification (origin) and vertexing tasks with the same hidden widths and one activation.
Anything else is refused, every problem named at once.

Differences of layout, all exact:

* salt's init net reads ``[jet variables, track variables]``, smilejax's ``[track variables, jet
  variables]``: the first kernel's rows are reordered;
* smilejax's jet classes are b, c, light, tau (``gn2.JET_CLASSES``, the data loader's order): salt's
  ``class_names`` (``bjets``, ``cjets``, ``ujets``, ``taujets``, any order, any prefix of those four
  flavours) reorder the jet head's last layer and the class weights;
* PyTorch's ``Linear.weight`` is ``[out, in]``, the fused q/k/v projection ``[3 * embed, embed]``.

The norm dict is written into the run directory (``norm_dict.yaml``, groups ``jets`` and ``tracks``):
from the checkpoint's normalisation buffers when it has them (the values the model was trained with),
else from the config's ``data.norm_dict`` file.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx

from . import gn2, torch_files
from .layers import activation_fn
from .spec import Imported

log = logging.getLogger(__name__)

# salt's jet class names -> smilejax's jet class (gn2.JET_CLASSES)
SALT_FLAVOURS = {"bjets": "b", "cjets": "c", "ujets": "light", "lightjets": "light", "taujets": "tau"}
ENCODERS = ("Transformer", "TransformerV2")
# salt Transformer arguments: (salt's default, what GN2 computes)
_ENCODER = {
    "norm": ("LayerNorm", "LayerNorm"),
    "norm_type": ("pre", "pre"),
    "do_final_norm": (True, True),
    "drop_registers": (False, False),
    "edge_embed_dim": (0, 0),
    "update_edges": (False, False),
    "mup": (False, False),
    "ls_init": (None, None),
    "drop_path": (0.0, 0.0),
    "num_dense": (1, 1),
}


@dataclasses.dataclass(frozen=True)
class SaltLayout:
    """Where salt keeps what GN2 needs: task indices, the jet inputs' count, the jet class order."""

    tasks: dict[str, int]  # "jet" / "origin" / "vertex" -> index in salt's task list
    jet_inputs: int  # jet variables in front of the track variables in salt's init-net input
    jet_order: tuple[int, ...]  # smilejax jet class k is salt's output jet_order[k]


@dataclasses.dataclass(frozen=True)
class Translation:
    """salt's config as smilejax config sections, and what the weight conversion needs."""

    sections: dict
    layout: SaltLayout
    inputs: dict[str, str]  # "jets" / "tracks" -> salt's input name (its norm buffers' prefix)
    norm_groups: dict[str, str]  # "jets" / "tracks" -> the group in salt's norm dict file
    norm_dict: str | None  # salt's norm dict file


# --------------------------------------------------------------------------------------------------
# config


def _node(value: Any) -> tuple[str, dict]:
    """(class name, init args) of a jsonargparse ``{class_path, init_args}`` node."""
    if not isinstance(value, Mapping) or "class_path" not in value:
        return "", dict(value) if isinstance(value, Mapping) else {}
    return str(value["class_path"]).rpartition(".")[2], dict(value.get("init_args") or {})


def translate(salt: Mapping) -> Translation:
    """smilejax config sections (model, data, optimizer) for salt's config ``salt`` (its parsed YAML).

    Raises ValueError naming every part of the config that smilejax's GN2 cannot compute."""
    problems: list[str] = []
    data = dict(salt.get("data") or {})
    wrapper = dict(salt.get("model") or {})
    kind, model = _node(wrapper.get("model"))
    if kind != "SaltModel":
        raise ValueError(
            f"model.model is {kind or 'missing'}, not salt.models.SaltModel: not a salt GN2 config"
        )

    glob = data.get("global_object", "jets")
    variables = dict(data.get("variables") or {})
    constituents = [k for k in variables if k != glob and not k.startswith("_")]
    if "global" in variables or "parameters" in variables or len(constituents) != 1:
        raise ValueError(
            f"data.variables has inputs {sorted(variables)}: GN2 takes {glob!r} and one constituent type "
            "(tracks), without global or parameter inputs"
        )
    trk = constituents[0]
    input_map = dict(data.get("input_map") or {}) or {k: k for k in variables}

    # init net
    init_nets = list(model.get("init_nets") or [])
    if len(init_nets) != 1 or init_nets[0].get("input_name") != trk:
        problems.append(
            f"model.init_nets must be one net for {trk!r}, got {[n.get('input_name') for n in init_nets]}"
        )
    init = dict(init_nets[0]) if init_nets else {}
    for key in ("pos_enc", "featurewise"):
        if init.get(key):
            problems.append(f"init_nets[0].{key} is set; GN2 has none")
    if model.get("featurewise_nets") or model.get("edge_init_nets") or model.get("mask_decoder"):
        problems.append("featurewise nets, edge init nets and mask decoders are not part of GN2")
    jet_vars = list(variables.get(glob) or []) if init.get("attach_global", True) else []
    track_vars = list(variables[trk])
    dense = dict(init.get("dense_config") or {})
    n_in = len(track_vars) + len(jet_vars)
    _check_dense(dense, "init_nets[0].dense_config", problems, input_size=n_in, context_size=0)
    init_hidden = list(dense.get("hidden_layers") or [n_in * int(dense.get("hidden_dim_scale", 2))])
    embed = int(dense.get("output_size") or n_in)

    # encoder
    kind, enc = _node(model.get("encoder"))
    if kind not in ENCODERS:
        raise ValueError(f"model.encoder is {kind or 'missing'}; GN2 needs salt.models.Transformer")
    attn = dict(enc.get("attn_kwargs") or {})
    ff = dict(enc.get("dense_kwargs") or {})
    _check_encoder(enc, attn, ff, embed, problems)
    out = int(enc.get("out_dim") or embed)

    kind, pool = _node(model.get("pool_net"))
    if kind != "GlobalAttentionPooling" or int(pool.get("input_size", -1)) != out:
        problems.append(f"pool_net must be GlobalAttentionPooling of input_size {out}, got {kind} {pool}")

    # tasks
    tasks = _tasks(model, glob, problems)
    shapes = {"jet": (out, 0), "origin": (out, out), "vertex": (2 * out, out)}
    head_hidden = None
    for role, (_, args) in tasks.items():
        d = dict(args.get("dense_config") or {})
        _check_dense(d, f"task {args.get('name')}.dense_config", problems, *shapes[role])
        hidden = list(d.get("hidden_layers") or [])
        if head_hidden is not None and hidden != head_hidden:
            problems.append(
                f"task hidden_layers differ ({head_hidden} and {hidden}); GN2 has one head_hidden"
            )
        head_hidden = hidden
    jet_args, origin_args, vertex_args = (tasks[r][1] for r in ("jet", "origin", "vertex"))
    jet_order, jet_names = _jet_order(jet_args, problems)
    origin_label, vertex_label = str(origin_args.get("label")), str(vertex_args.get("label"))
    if origin_args.get("label_map"):
        problems.append("the origin task has a label_map; GN2's origin classes are the labels themselves")
    if "OriginLabel" not in origin_label or "VertexIndex" not in vertex_label:
        problems.append(
            f"labels {origin_label!r} / {vertex_label!r} are not track origin / vertex index labels"
        )

    heads = [dict(a.get("dense_config") or {}) for a in (jet_args, origin_args, vertex_args)]
    activation, dropout = _one_activation_and_rate(dense, attn, ff, heads, problems)
    if problems:
        raise ValueError("salt config: " + "; ".join(problems))

    model_section = {
        "name": "gn2",
        "track_features": n_in,
        "embed": embed,
        "init_hidden": init_hidden,
        "layers": int(enc["num_layers"]),
        "heads": int(attn.get("num_heads", 1)),
        "ff": int(ff.get("hidden_dim") or 2 * embed),
        "out": out,
        "registers": int(enc.get("num_registers", 1)),
        "head_hidden": head_hidden,
        "jet_classes": len(jet_order),
        "origin_classes": int(origin_args["dense_config"]["output_size"]),
        "activation": activation,
        "dropout": dropout,
        "jet_weight": float(jet_args.get("weight", 1.0)),
        "origin_weight": float(origin_args.get("weight", 1.0)),
        "vertex_weight": float(vertex_args.get("weight", 1.0)),
        "vertex_loss_norm": "matches",
        "class_weights": _class_weights(jet_args, origin_args, jet_order),
    }
    data_section = {
        "format": "ftag_h5",
        "jets_name": input_map.get(glob, glob),
        "tracks_name": input_map.get(trk, trk),
        "jet_vars": jet_vars,
        "track_vars": track_vars,
        "path": data.get("train_file"),
        "eval_path": data.get("val_file"),
    }
    if jet_args.get("label", "flavour_label") != "flavour_label":
        data_section["flavour_label"] = str(jet_args["label"])
    devices = (salt.get("trainer") or {}).get("devices", 1)
    if data.get("batch_size"):  # salt's batch is per device
        data_section["batch_size"] = int(data["batch_size"]) * (devices if isinstance(devices, int) else 1)
    sections = {"model": model_section, "data": data_section}
    if lrs := wrapper.get("lrs_config"):
        sections["optimizer"] = _optimizer(lrs, str(wrapper.get("optimizer", "AdamW")))
    log.info("salt jet classes %s -> smilejax %s", jet_names, list(gn2.JET_CLASSES[: len(jet_order)]))
    return Translation(
        sections=sections,
        layout=SaltLayout(
            tasks={r: i for r, (i, _) in tasks.items()}, jet_inputs=len(jet_vars), jet_order=jet_order
        ),
        inputs={"jets": glob, "tracks": trk},
        norm_groups={"jets": input_map.get(glob, glob), "tracks": input_map.get(trk, trk)},
        norm_dict=data.get("norm_dict"),
    )


def _one_activation_and_rate(
    init: dict, attn: dict, ff: dict, heads: list[dict], problems: list[str]
) -> tuple[str, float]:
    """The one activation and the one dropout rate GN2 has, from salt's init net, encoder and task heads
    (each with salt's default); several of either is a problem."""
    activations = {
        str(x.get("activation", default)).lower()
        for x, default in [(init, "ReLU"), (ff, "SiLU")] + [(h, "ReLU") for h in heads]
    }
    if len(activations) != 1:
        problems.append(f"the config uses activations {sorted(activations)}; GN2 has one activation")
    activation = activations.pop() if len(activations) == 1 else "relu"
    try:
        activation_fn(activation)
    except ValueError as err:
        problems.append(str(err))
    rates = {float(x.get("dropout", 0.0)) for x in (attn, ff, init, *heads)}
    if len(rates) != 1:
        problems.append(f"the config uses dropout rates {sorted(rates)}; GN2 has one dropout rate")
    return activation, max(rates)


def _class_weights(jet_args: dict, origin_args: dict, jet_order: tuple[int, ...]) -> dict | None:
    """The jet and origin class weights written in salt's task configs (jet classes in smilejax's order);
    a task that reads them from a class dict the config does not hold trains without, with a warning."""
    for args in (jet_args, origin_args):
        if args.get("use_class_dict") and _loss_weights(args) is None:
            log.warning(
                "salt task %s reads its class weights from a class dict the config does not hold: the run "
                "trains without them (salt's config.yaml next to its checkpoints has them)",
                args.get("name"),
            )
    weights = {}
    if (jet_w := _loss_weights(jet_args)) is not None:
        weights["jet"] = [float(jet_w[k]) for k in jet_order]
    if (origin_w := _loss_weights(origin_args)) is not None:
        weights["origin"] = [float(w) for w in origin_w]
    return weights or None


def _check_encoder(enc: dict, attn: dict, ff: dict, embed: int, problems: list[str]) -> None:
    """A salt ``Transformer`` GN2's ``Encoder`` computes: pre-LayerNorm, plain attention and feed-forward,
    registers kept, an output projection and final norm."""
    for key, (default, want) in {**_ENCODER, "embed_dim": (None, embed)}.items():
        have = enc.get(key, default)
        if have != want:
            problems.append(f"encoder.{key} is {have!r}; GN2 needs {want!r}")
    if enc.get("out_dim") is None:
        problems.append("encoder.out_dim is not set; GN2 projects the encoder output (out_dim)")
    if int(enc.get("num_registers", 1)) < 1:
        problems.append("encoder.num_registers must be at least 1")
    for key, want in (("bias", True), ("do_qk_norm", False), ("do_v_norm", False), ("mup", False)):
        if attn.get(key, want) != want:
            problems.append(f"encoder.attn_kwargs.{key} is {attn[key]!r}; GN2 needs {want!r}")
    for key, want in (("gated", False), ("bias", True), ("mup", False)):
        if ff.get(key, want) != want:
            problems.append(f"encoder.dense_kwargs.{key} is {ff[key]!r}; GN2 needs {want!r}")


def _tasks(model: dict, glob: str, problems: list[str]) -> dict[str, tuple[int, dict]]:
    """GN2's tasks in salt's task list: {"jet" | "origin" | "vertex": (index, init args)}; raises when
    one is missing."""
    _, task_list = _node(model.get("tasks"))
    tasks: dict[str, tuple[int, dict]] = {}
    for i, node in enumerate(task_list.get("modules") or []):
        kind, args = _node(node)
        role = {"VertexingTask": "vertex", "ClassificationTask": "origin"}.get(kind)
        if role == "origin" and args.get("input_name") == glob:
            role = "jet"
        if role is None or role in tasks:
            problems.append(f"task {args.get('name', i)!r} ({kind}) is not one of GN2's three tasks")
            continue
        tasks[role] = (i, args)
    missing = [r for r in ("jet", "origin", "vertex") if r not in tasks]
    if missing:
        problems.append(f"GN2 has jet, origin and vertex tasks; the config lacks {missing}")
        raise ValueError("salt config: " + "; ".join(problems))
    return tasks


def _check_dense(d: dict, where: str, problems: list[str], input_size: int, context_size: int) -> None:
    """A salt ``Dense`` GN2 can compute: these input and context widths, bias, no final activation."""
    if int(d.get("input_size", input_size)) != input_size:
        problems.append(f"{where}.input_size is {d['input_size']}; GN2 needs {input_size}")
    if int(d.get("context_size", 0)) != context_size:
        problems.append(f"{where}.context_size is {d.get('context_size', 0)}; GN2 needs {context_size}")
    for key, want in (("bias", True), ("final_activation", None), ("mup", False)):
        if d.get(key, want) != want:
            problems.append(f"{where}.{key} is {d[key]!r}; GN2 needs {want!r}")


def _jet_order(jet_args: dict, problems: list[str]) -> tuple[tuple[int, ...], list[str]]:
    """smilejax's jet class k <- salt's output order[k], from salt's class names."""
    names = jet_args.get("class_names")
    if not names:
        problems.append(
            "the jet task has no class_names (salt fills them in the config.yaml it writes next to its "
            "checkpoints: pass that one)"
        )
        return (), []
    ours = [SALT_FLAVOURS.get(str(n)) for n in names]
    wanted = list(gn2.JET_CLASSES[: len(names)])
    if None in ours or sorted(ours, key=gn2.JET_CLASSES.index) != wanted:
        problems.append(
            f"jet class_names {list(names)} must be the flavours {list(SALT_FLAVOURS)[:3]} (+ taujets) in "
            f"any order, mapping to GN2's {list(gn2.JET_CLASSES)}"
        )
        return (), list(names)
    return tuple(ours.index(c) for c in wanted), list(names)


def _loss_weights(task: dict) -> list[float] | None:
    _, loss = _node(task.get("loss"))
    weight = loss.get("weight")
    return None if weight is None else [float(w) for w in np.ravel(weight)]


def _optimizer(lrs: Mapping, name: str) -> dict:
    """salt's one-cycle schedule (``lrs_config``) and optimizer as smilejax's optimizer section."""
    out = {
        "lr": float(lrs["max"]),
        "initial_lr": float(lrs["initial"]),
        "final_lr": float(lrs["end"]),
        "warmup": float(lrs.get("pct_start", 0.01)),
        "weight_decay": float(lrs.get("weight_decay", 1e-5)),
        "schedule": "onecycle",
    }
    if name.lower() in ("adamw", "lion"):
        out["name"] = name.lower()
    return out


# --------------------------------------------------------------------------------------------------
# weights


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
    model: gn2.GN2, state_dict: Mapping[str, np.ndarray], layout: SaltLayout
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


def load_salt_state_dict(model: gn2.GN2, state_dict: Mapping[str, np.ndarray], layout: SaltLayout) -> None:
    """Copies salt's weights (``SaltModel.state_dict()`` as numpy arrays) into ``model``."""
    nnx.update(model, convert_salt_state_dict(model, state_dict, layout))


# --------------------------------------------------------------------------------------------------
# files


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """(model state dict, normalisation buffers ``{name: array}``, Lightning metadata) of a salt
    checkpoint file: a Lightning ``.ckpt`` or a plain state dict (``split_state``)."""
    obj = torch_files.load(path)
    meta: dict = {}
    if isinstance(obj, Mapping) and "state_dict" in obj:
        meta = {k: obj[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in obj}
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path}: neither a Lightning checkpoint nor a state dict of tensors")
    return (*split_state(obj), meta)


def split_state(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(SaltModel's state dict, InputNorm's buffers) of a state dict: ``ModelWrapper``'s (keys ``model.*``
    and ``norm.*``) or ``SaltModel``'s own. ``torch.compile``'s ``_orig_mod.`` (salt's ``compile``
    option wraps the model) is dropped from the keys."""
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    if not any(k.startswith("model.") for k in state):
        return state, {}
    model = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    norm = {k.removeprefix("norm."): v for k, v in state.items() if k.startswith("norm.")}
    return model, norm


def find_config(checkpoint: Path) -> Path:
    """salt's config.yaml for ``checkpoint``: next to it or one folder up (``logs/<run>/ckpts/``)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(
        f"no salt config.yaml next to {checkpoint} or one folder up; pass it with --config"
    )


def norm_dict(tr: Translation, buffers: Mapping[str, np.ndarray], where: str) -> dict:
    """smilejax's norm dict ``{jets|tracks: {var: {mean, std}}}``: from the checkpoint's buffers, else
    from salt's norm dict file."""
    variables = {"jets": tr.sections["data"]["jet_vars"], "tracks": tr.sections["data"]["track_vars"]}
    if buffers:
        out = {}
        for group, names in variables.items():
            name = tr.inputs[group]
            if not names:
                continue
            means, stds = buffers.get(f"{name}_means"), buffers.get(f"{name}_stds")
            if means is None or stds is None or len(means) != len(names) or len(stds) != len(names):
                raise ValueError(
                    f"{where}: normalisation buffers norm.{name}_means/_stds do not hold {len(names)} values "
                    f"for {names}"
                )
            out[group] = {
                v: {"mean": float(m), "std": float(s)} for v, m, s in zip(names, means, stds, strict=True)
            }
        return out
    if not tr.norm_dict or not Path(tr.norm_dict).is_file():
        raise FileNotFoundError(
            f"{where} holds no normalisation and the config's data.norm_dict ({tr.norm_dict}) is not a file"
        )
    source = yaml.safe_load(Path(tr.norm_dict).read_text()) or {}
    out = {}
    for group, names in variables.items():
        table = source.get(tr.norm_groups[group]) or {}
        missing = [v for v in names if v not in table]
        if missing:
            raise ValueError(f"norm dict {tr.norm_dict} has no {tr.norm_groups[group]}/{missing}")
        out[group] = {v: {"mean": float(table[v]["mean"]), "std": float(table[v]["std"])} for v in names}
    return out


def import_salt(checkpoint: Path, config_path: Path | None, run_dir: Path) -> Imported:
    """``smilejax import salt``: salt's checkpoint and config as a GN2 run's config and weights; writes
    the norm dict into ``run_dir``."""
    checkpoint = Path(checkpoint)
    config_path = Path(config_path) if config_path else find_config(checkpoint)
    salt_cfg = yaml.safe_load(config_path.read_text())
    if not isinstance(salt_cfg, Mapping):
        raise ValueError(f"{config_path}: not a salt config (a YAML mapping)")
    tr = translate(salt_cfg)
    state_dict, buffers, meta = read_checkpoint(checkpoint)
    norm = norm_dict(tr, buffers, str(checkpoint))
    run_dir.mkdir(parents=True, exist_ok=True)
    norm_path = run_dir / "norm_dict.yaml"
    norm_path.write_text(yaml.safe_dump(norm, sort_keys=False))
    sections = {**tr.sections, "data": {**tr.sections["data"], "norm_dict": str(norm_path.absolute())}}
    source = {
        "format": "salt",
        "checkpoint": str(checkpoint.absolute()),
        "config": str(config_path.absolute()),
        "name": salt_cfg.get("name"),
        "norm": "checkpoint buffers" if buffers else str(tr.norm_dict),
        **{k: v for k, v in meta.items() if isinstance(v, int | str)},
    }
    return Imported(
        config=sections,
        params=lambda model: convert_salt_state_dict(model, state_dict, tr.layout),
        source=source,
    )
