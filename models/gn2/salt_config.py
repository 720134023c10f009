"""salt's training YAML as smilejax config sections (``translate``): what GN2 can compute of it, every
problem named at once, and where salt keeps GN2's parts (``SaltLayout``) for the weight conversion
(``salt_weights``). See ``salt`` for what is read and refused."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..layers import activation_fn
from .model import JET_CLASSES

log = logging.getLogger(__name__)

# salt's jet class names -> smilejax's jet class (JET_CLASSES)
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

    glob, trk, variables, input_map = _inputs(data)

    init = _init_net(model, trk, problems)
    jet_vars = list(variables.get(glob) or []) if init.get("attach_global", True) else []
    track_vars = list(variables[trk])
    dense = dict(init.get("dense_config") or {})
    n_in = len(track_vars) + len(jet_vars)
    _check_dense(dense, "init_nets[0].dense_config", problems, input_size=n_in, context_size=0)
    init_hidden = list(dense.get("hidden_layers") or [n_in * int(dense.get("hidden_dim_scale", 2))])
    embed = int(dense.get("output_size") or n_in)

    enc, attn, ff = _encoder(model, embed, problems)
    out = int(enc.get("out_dim") or embed)

    kind, pool = _node(model.get("pool_net"))
    if kind != "GlobalAttentionPooling" or int(pool.get("input_size", -1)) != out:
        problems.append(f"pool_net must be GlobalAttentionPooling of input_size {out}, got {kind} {pool}")

    tasks = _tasks(model, glob, problems)
    head_hidden = _head_hidden(tasks, out, problems)
    jet_args, origin_args, vertex_args = (tasks[r][1] for r in ("jet", "origin", "vertex"))
    jet_order, jet_names = _jet_order(jet_args, problems)
    _check_track_labels(origin_args, vertex_args, problems)

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
        **_data_settings(salt, data, jet_args),
    }
    sections = {"model": model_section, "data": data_section}
    if lrs := wrapper.get("lrs_config"):
        sections["optimizer"] = _optimizer(lrs, str(wrapper.get("optimizer", "AdamW")))
    log.info("salt jet classes %s -> smilejax %s", jet_names, list(JET_CLASSES[: len(jet_order)]))
    return Translation(
        sections=sections,
        layout=SaltLayout(
            tasks={r: i for r, (i, _) in tasks.items()}, jet_inputs=len(jet_vars), jet_order=jet_order
        ),
        inputs={"jets": glob, "tracks": trk},
        norm_groups={"jets": input_map.get(glob, glob), "tracks": input_map.get(trk, trk)},
        norm_dict=data.get("norm_dict"),
    )


def _inputs(data: dict) -> tuple[str, str, dict, dict]:
    """(jets group, tracks group, data.variables, data.input_map) of salt's data section; one constituent
    type and no global or parameter inputs, as GN2 takes them."""
    glob = data.get("global_object", "jets")
    variables = dict(data.get("variables") or {})
    constituents = [k for k in variables if k != glob and not k.startswith("_")]
    if "global" in variables or "parameters" in variables or len(constituents) != 1:
        raise ValueError(
            f"data.variables has inputs {sorted(variables)}: GN2 takes {glob!r} and one constituent type "
            "(tracks), without global or parameter inputs"
        )
    input_map = dict(data.get("input_map") or {}) or {k: k for k in variables}
    return glob, constituents[0], variables, input_map


def _encoder(model: dict, embed: int, problems: list[str]) -> tuple[dict, dict, dict]:
    """salt's Transformer encoder: its arguments, attention and dense arguments (checked)."""
    kind, enc = _node(model.get("encoder"))
    if kind not in ENCODERS:
        raise ValueError(f"model.encoder is {kind or 'missing'}; GN2 needs salt.models.Transformer")
    attn = dict(enc.get("attn_kwargs") or {})
    ff = dict(enc.get("dense_kwargs") or {})
    _check_encoder(enc, attn, ff, embed, problems)
    return enc, attn, ff


def _init_net(model: dict, trk: str, problems: list[str]) -> dict:
    """The one init net of the track input, without positional encoding or feature-wise nets."""
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
    return init


def _head_hidden(tasks: dict[str, tuple[int, dict]], out: int, problems: list[str]) -> list[int] | None:
    """The hidden widths the three task heads share (GN2 has one ``head_hidden``)."""
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
    return head_hidden


def _check_track_labels(origin_args: dict, vertex_args: dict, problems: list[str]) -> None:
    origin_label, vertex_label = str(origin_args.get("label")), str(vertex_args.get("label"))
    if origin_args.get("label_map"):
        problems.append("the origin task has a label_map; GN2's origin classes are the labels themselves")
    if "OriginLabel" not in origin_label or "VertexIndex" not in vertex_label:
        problems.append(
            f"labels {origin_label!r} / {vertex_label!r} are not track origin / vertex index labels"
        )


def _data_settings(salt: Mapping, data: dict, jet_args: dict) -> dict:
    """The files, the jet label and the global batch (salt's batch is per device) of the data section."""
    out = {"path": data.get("train_file"), "eval_path": data.get("val_file")}
    if jet_args.get("label", "flavour_label") != "flavour_label":
        out["flavour_label"] = str(jet_args["label"])
    devices = (salt.get("trainer") or {}).get("devices", 1)
    if data.get("batch_size"):
        out["batch_size"] = int(data["batch_size"]) * (devices if isinstance(devices, int) else 1)
    return out


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
    wanted = list(JET_CLASSES[: len(names)])
    if None in ours or sorted(ours, key=JET_CLASSES.index) != wanted:
        problems.append(
            f"jet class_names {list(names)} must be the flavours {list(SALT_FLAVOURS)[:3]} (+ taujets) in "
            f"any order, mapping to GN2's {list(JET_CLASSES)}"
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
