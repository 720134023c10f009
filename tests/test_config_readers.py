"""Every config field has a reader: a field that nothing reads is a setting a user changes to no effect.

The package's sources (``smilejax/``, ``models/``, ``inputs/``) are parsed; a field counts as read where its
name is loaded as an attribute (``cfg.data.class_dict``, ``self.cfg.max_tracks``) or written as a string
(``getattr(cfg, "attention")``, ``tree["steps"]``) outside the class that defines it and its dataclass
bases (their own validation is no use of the value). Fields read through a name built at run time are
listed in ``DYNAMIC_READERS`` with the source text that reads them, and both are checked to still exist.

The limitation: a name is matched wherever it occurs, whatever object it is read on, so a field with a
common name (``path``, ``name``, ``seed``, ``steps``) can hardly fail: any ``x.path`` in the package counts
as its reader. The sections that the package reads only on the section itself (``cfg.run.seed``,
``cfg.train.precision``), listed in ``ON_SECTION``, are checked more strictly: a field of theirs counts as
read only as ``<...>.<section>.<field>``. The other sections and the format and model configs are handed
on as objects (``opt.b1``, ``cfg.jet_vars`` on a ``FtagConfig``), so no receiver name can be required.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from functools import cache
from pathlib import Path

import pytest

import smilejax
from smilejax import config, inputs, models, registry
from smilejax.launch import systems
from smilejax.tune import space

# (config class, field) -> the source text that reads the field through a name built at run time
DYNAMIC_READERS = {
    # models/mlpf/model.py: each regression target's mode, by the target's name
    **{("MLPFConfig", f"{m}_mode"): 'getattr(cfg, f"{name}_mode")' for m in ("pt", "eta", "energy")},
    **{("MLPFConfig", f"{m}_mode"): 'getattr(cfg, f"{name}_mode")' for m in ("sin_phi", "cos_phi")},
}


# Config sections whose fields are read only on the section (cfg.run.seed): class name -> section name
ON_SECTION = {"RunConfig": "run", "TrainConfig": "train"}


def _sources() -> list[Path]:
    roots = {Path(p.__file__).parent for p in (smilejax, models, inputs)}
    return sorted(f for root in roots for f in root.rglob("*.py"))


def _model_configs() -> list[type]:
    return [registry.model(name).config for name in registry.models()]


def _data_configs() -> list[type]:
    return [registry.dataset(name).config for name in registry.datasets()]


def _nested(cls: type) -> list[type]:
    """``cls`` and the dataclasses its fields hold (a section inside a section)."""
    out = [cls]
    for hint in typing.get_type_hints(cls).values():
        for arg in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type) and arg not in out:
                out += _nested(arg)
    return out


def config_classes() -> list[type]:
    """Every config dataclass: the fixed sections of ``Config``, each data format's and each model's, and
    those of the other YAML files users write (launch systems, tuning search spaces)."""
    sections = [h for h in typing.get_type_hints(config.Config).values() if dataclasses.is_dataclass(h)]
    others = [systems.System, space.Objective, space.Param]
    found: list[type] = []
    for cls in [*sections, *_data_configs(), *_model_configs(), *others]:
        found += [c for c in _nested(cls) if c not in found]
    return found


def _own_lines(cls: type) -> set[tuple[str, int]]:
    """(file, line) of the class body of ``cls`` and of its dataclass bases."""
    lines = set()
    for c in cls.__mro__:
        if dataclasses.is_dataclass(c):
            source, start = inspect.getsourcelines(c)
            lines |= {(inspect.getsourcefile(c), n) for n in range(start, start + len(source))}
    return lines


@cache
def _uses() -> dict[str, set[tuple[str, int]]]:
    """name -> (file, line) of every attribute load and string constant of that name in the package; an
    attribute loaded on an attribute (``cfg.run.seed``) is also listed as ``"run.seed"``."""
    uses: dict[str, set[tuple[str, int]]] = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.append(node.attr)
                if isinstance(node.value, ast.Attribute):
                    names.append(f"{node.value.attr}.{node.attr}")
                elif isinstance(node.value, ast.Name):  # run = cfg.run; run.steps
                    names.append(f"{node.value.id}.{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                names.append(node.value)
            for name in names:
                uses.setdefault(name, set()).add((str(path), node.lineno))
    return uses


def unread_fields(cls: type) -> list[str]:
    own = _own_lines(cls)
    section = ON_SECTION.get(cls.__name__)
    return [
        f.name
        for f in dataclasses.fields(cls)
        if (cls.__name__, f.name) not in DYNAMIC_READERS
        and not (_uses().get(f"{section}.{f.name}" if section else f.name, set()) - own)
    ]


def test_config_classes_cover_every_section_format_and_model():
    names = {c.__name__ for c in config_classes()}
    assert {"RunConfig", "OptimizerConfig", "MeshConfig", "TrainConfig", "LoggingConfig"} <= names
    assert {"FtagConfig", "MLPFConfig", "GN2Config", "System", "Param"} <= names
    assert len(_sources()) > 50 and any(p.match("gn2/model.py") for p in _sources())  # family packages too


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_config_field_has_a_reader(cls):
    unread = unread_fields(cls)
    assert not unread, (
        f"{cls.__name__} fields that nothing outside the class reads: {unread}; read them where they take "
        "effect, or remove them (an old config naming one then fails with the unknown-key error)"
    )


def test_dynamic_readers_still_exist():
    classes = {c.__name__: c for c in config_classes()}
    text = "\n".join(p.read_text() for p in _sources())
    for (cls_name, field), reader in DYNAMIC_READERS.items():
        assert cls_name in classes, f"DYNAMIC_READERS names {cls_name}, no longer a config class"
        assert field in {f.name for f in dataclasses.fields(classes[cls_name])}, f"{cls_name}.{field} is gone"
        assert reader in text, f"the reader of {cls_name}.{field}, {reader!r}, is no longer in the package"


def test_the_check_sees_an_unread_field(monkeypatch):
    """Controls: a field nothing reads is reported; a read inside the field's own class is seen and not
    counted; a dynamically read field is reported once its allowlist entry goes; a common name passes
    anywhere but in an ``ON_SECTION`` section, where it must be read on the section."""

    @dataclasses.dataclass
    class Probe:
        ignored_by_everyone_xyz: int = 0
        path: str = ""

    assert unread_fields(Probe) == ["ignored_by_everyone_xyz"]  # any x.path counts: the limitation
    monkeypatch.setitem(ON_SECTION, "Probe", "run")
    assert unread_fields(Probe) == ["ignored_by_everyone_xyz", "path"]  # nothing reads cfg.run.path
    assert _uses()["run.seed"] and _uses()["seed"] - _uses()["run.seed"], "seed is read on other objects too"
    ftag = next(c for c in config_classes() if c.__name__ == "FtagConfig")
    assert _uses()["bucket_window"] & _own_lines(ftag), "FtagConfig.__post_init__ reads bucket_window"
    assert _uses()["bucket_window"] - _own_lines(ftag), "and the pipeline reads it"
    mlpf = next(c for c in config_classes() if c.__name__ == "MLPFConfig")
    monkeypatch.delitem(DYNAMIC_READERS, ("MLPFConfig", "pt_mode"))
    assert unread_fields(mlpf) == ["pt_mode"]
