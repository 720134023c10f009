"""The command line's parsing: KEY=VALUE overrides before and after options, and an --option that names
a config field answered with the dotted override."""

from __future__ import annotations

import argparse

import pytest
import yaml

from smilejax import cli, metrics
from smilejax.commands import common
from tests.conftest import run_cli

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


@pytest.mark.parametrize(
    ("argv", "overrides", "option"),
    [
        (
            ["tune", "gn2", "run.b=1", "--space", "s.yaml", "run.steps=5", "--trials", "2", "model.x=[1, 2]"],
            ["run.b=1", "run.steps=5", "model.x=[1, 2]"],
            ("trials", 2),
        ),
        (["train", "gn2", "run.steps=5"], ["run.steps=5"], ("config", "gn2")),
        (
            ["config", "gn2", "optimizer.lr=3e-4", "run.dir="],
            ["optimizer.lr=3e-4", "run.dir="],
            ("config", "gn2"),
        ),
        (
            ["launch", "--system", "local", "gn2", "--nodes", "2", "run.steps=3", "--dry-run"],
            ["run.steps=3"],
            ("nodes", 2),
        ),
        (
            ["bench", "input", "gn2", "--files", "a.h5", "b.h5", "data.batch_size=8", "--batches", "2"],
            ["data.batch_size=8"],
            ("files", ["a.h5", "b.h5"]),  # not given to an option of several values
        ),
        (
            ["bench", "train", "gn2", "--bucket", "16", "24", "model.embed=64", "--vary", "model.heads=2,4"],
            ["model.embed=64"],
            ("vary", ["model.heads=2,4"]),  # an option's own KEY=VALUE value stays its own
        ),
        (["bench", "hpo", "run.steps=5", "--seeds", "1"], ["run.steps=5"], ("config", "hpo-study")),
        (["tune", "gn2", "--spa", "s.yaml", "run.steps=5"], ["run.steps=5"], ("space", "s.yaml")),
    ],
)
def test_overrides_are_taken_before_and_after_options(argv, overrides, option):
    args = cli.parse(argv)
    assert args.overrides == overrides  # in command-line order: a later value of a key wins
    assert getattr(args, option[0]) == option[1]


def test_file_names_with_equals_signs_are_arguments_not_overrides(tmp_path, monkeypatch):
    """salt names its checkpoints epoch=039-val_loss=0.59.ckpt; an override is section.key=value, and no
    file of that name."""
    monkeypatch.chdir(tmp_path)
    salt = "epoch=039-val_loss=0.59.ckpt"
    (tmp_path / salt).write_bytes(b"")
    args = cli.parse(["import", "salt", salt, "model.embed=64"])
    assert (args.source, args.checkpoint, args.overrides) == ("salt", salt, ["model.embed=64"])
    sweep = "model.embed=64.yaml"  # a config file named after its change
    (tmp_path / sweep).write_text("base: gn2\n")
    args = cli.parse(["train", sweep, "run.steps=5"])
    assert (args.config, args.overrides) == (sweep, ["run.steps=5"])
    # not a file: the same word is an override again
    assert cli.parse(["train", "gn2", "model.embed=32.yaml"]).overrides == ["model.embed=32.yaml"]


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.parse(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_an_option_that_names_a_config_field_suggests_the_override(capsys, toy_yaml):
    err = _error(capsys, ["train", "gn2", "--steps", "10"])
    assert "usage: smilejax train" in err and "unrecognized arguments: --steps 10" in err
    assert "did you mean run.steps=10?" in err
    # the config's own model fields, the --key=value form, dashes for underscores
    toy = str(toy_yaml())
    assert "did you mean model.hidden=64?" in _error(capsys, ["train", toy, "--hidden=64"])
    assert "did you mean run.eval_every=5?" in _error(
        capsys, ["tune", toy, "--space", "s", "--eval-every", "5"]
    )
    assert "did you mean optimizer.name=lion or logging.name=lion" in _error(
        capsys, ["train", toy, "--name", "lion"]
    )


def test_other_unknown_arguments_get_argparse_error(capsys, toy_yaml):
    err = _error(capsys, ["train", str(toy_yaml()), "--bogus", "3"])
    assert "unrecognized arguments: --bogus 3" in err and "did you mean" not in err
    # a command without config overrides takes no KEY=VALUE
    err = _error(capsys, ["export", "runs/x", "--out", "repo", "run.steps=3"])
    assert "usage: smilejax export" in err and "unrecognized arguments: run.steps=3" in err


def test_tune_trains_with_overrides_given_after_its_options(tmp_path, toy_yaml):
    cfg = toy_yaml(run={"eval_every": 4})
    space = tmp_path / "space.yaml"
    lr = {"type": "float", "low": 1e-3, "high": 1e-2}
    space.write_text(
        yaml.safe_dump({"objective": {"metric": "eval/loss"}, "parameters": {"optimizer.lr": lr}})
    )
    study = tmp_path / "study"
    argv = ["tune", str(cfg), "--space", str(space), "--trials", "1", "--dir", str(study)]
    proc = run_cli(*argv, "run.steps=3", "run.eval_every=3", "run.eval_steps=1", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((study / "trial-0000" / "config.yaml").read_text())
    assert saved["run"]["steps"] == 3 and saved["run"]["eval_every"] == 3
    records = metrics.read(study / "trial-0000" / "metrics.jsonl")
    assert [r["step"] for r in records if "eval/loss" in r] == [3]


def test_config_errors_of_a_based_file_come_in_one_message(capsys, tmp_path, toy_yaml):
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"base: {toy_yaml().name}\nrun: {{stepz: 3}}\nmodel: {{hiden: 8}}\n")
    assert cli.main(["config", str(mine), "optimizer.lr=fast"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smilejax: config error: 3 problems:\n")
    for expected in (
        "run.'stepz': did you mean 'steps'",
        "model.'hiden': did you mean 'hidden'",
        "optimizer.lr must be float, got str 'fast'",
    ):
        assert expected in err


def test_ctrl_c_ends_any_command_with_one_line_and_130(capsys, monkeypatch):
    """A Ctrl-C outside a training loop (tune's study after its trial's checkpoint, an export): the shell's
    status for a Ctrl-C and one line, no traceback; --verbose keeps the traceback."""
    from smilejax.commands import config as config_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(config_command, "run", interrupted)
    assert cli.main(["config", "gn2"]) == 130
    assert capsys.readouterr().err == "smilejax: interrupted\n"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--verbose", "config", "gn2"])


def test_import_help_lists_each_source_with_its_importers_description(capsys, monkeypatch):
    """The sources come from the models' importers, each described by its own docstring; the command
    names none itself."""
    from smilejax import importer

    def _help() -> str:
        with pytest.raises(SystemExit) as exit_:
            cli.parse(["import", "--help"])
        assert exit_.value.code == 0
        return " ".join(capsys.readouterr().out.split())  # the listing is wrapped

    salt = importer.describe(importer.find("salt")[1])
    assert salt.startswith("ATLAS salt's GN2: a Lightning .ckpt or a SaltModel state-dict .pt")
    assert f"salt {salt} (model: gn2)" in _help()

    def from_elsewhere(checkpoint, config_path, run_dir):
        """Elsewhere's checkpoints, with its run file.

        Not part of the description."""

    spec = importer.find("salt")[0]
    monkeypatch.setattr(importer, "importers", lambda: {"elsewhere": (spec, from_elsewhere)})
    listed = _help()
    assert "elsewhere Elsewhere's checkpoints, with its run file. (model: gn2)" in listed
    assert "salt" not in listed and "Not part" not in listed


def _shapes_parser(seen: list[list[str]]) -> argparse.ArgumentParser:
    """A toy command line whose ``draw SHAPE`` takes the options of its shape: ``--radius`` for a circle,
    added by the command's ``extend`` hook once SHAPE is known."""
    parser = argparse.ArgumentParser(prog="toy")
    parser.add_argument("-v", "--verbose", action="store_true")
    draw = parser.add_subparsers(dest="command", required=True).add_parser("draw")
    draw.add_argument("shape")
    draw.add_argument("overrides", nargs="*")
    draw.add_argument("--count", type=int, default=1)
    draw.add_argument("--sizes", type=int, nargs="+", default=[])

    def extend(command: argparse.ArgumentParser, argv: list[str]) -> None:
        seen.append(argv)
        known = common.peek(command, argv)
        if known is not None and known.shape == "circle":
            command.add_argument("--radius", type=float, default=1.0, help="the circle's own radius")
        if known is not None and known.shape == "nowhere":
            raise FileNotFoundError("nowhere: no such shape file")

    draw.set_defaults(extend=extend)
    return parser


def test_a_command_adds_options_that_depend_on_its_arguments(capsys):
    seen: list[list[str]] = []
    argv = ["-v", "draw", "circle", "run.steps=3", "--sizes", "1", "2", "model.x=4", "--radius", "2.5"]
    args = cli.parse(argv, _shapes_parser(seen))
    assert (args.shape, args.radius, args.sizes, args.count) == ("circle", 2.5, [1, 2], 1)
    assert args.overrides == ["run.steps=3", "model.x=4"]  # split around the added option too
    assert seen == [["circle", "--sizes", "1", "2", "--radius", "2.5"]]  # its own arguments, no override
    assert cli.parse(["draw", "circle"], _shapes_parser([])).radius == 1.0
    assert cli.parse(["draw", "--count", "3", "circle", "--radius=4"], _shapes_parser([])).radius == 4.0

    with pytest.raises(SystemExit) as exit_:
        cli.parse(["draw", "square", "--radius", "2"], _shapes_parser([]))
    assert exit_.value.code == 2
    assert "unrecognized arguments: --radius 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.parse(["draw", "nowhere"], _shapes_parser([]))
    assert exit_.value.code == 2
    assert "toy draw: error: nowhere: no such shape file" in capsys.readouterr().err


def test_the_added_options_are_in_the_help_once_the_argument_is_given(capsys):
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            cli.parse(["draw", *argv], _shapes_parser([]))
        assert exit_.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    for argv in (("circle", "--help"), ("--help", "circle"), ("-h", "circle", "--count", "2")):
        assert "--radius RADIUS the circle's own radius" in help_of(*argv), argv
    assert "--radius" not in help_of("square", "--help")
    assert "--radius" not in help_of("--help")  # no shape yet: the command's own options
    assert "--radius" not in help_of("--help", "--count", "x", "circle")  # does not parse yet


def test_peek_reads_the_arguments_so_far_without_exiting():
    parser = _shapes_parser([])._subparsers._group_actions[0].choices["draw"]
    assert common.peek(parser, ["circle", "--later", "--count", "2", "--help"]).count == 2
    assert common.peek(parser, ["--count", "2"]) is None  # SHAPE is missing
    assert common.peek(parser, ["circle", "--count", "two"]) is None
    assert "error" not in vars(parser)  # the parser is as it was


def test_a_hook_may_add_sub_commands_whose_own_hooks_run_next():
    parser = argparse.ArgumentParser(prog="toy")
    make = parser.add_subparsers(dest="command", required=True).add_parser("make")
    calls = []

    def add_makers(command: argparse.ArgumentParser, argv: list[str]) -> None:
        calls.append(("make", argv))
        blobs = command.add_subparsers(dest="maker", required=True).add_parser("blobs")
        blobs.add_argument("--out")
        blobs.set_defaults(
            extend=lambda p, a: calls.append(("blobs", a)) or p.add_argument("--seed", type=int)
        )

    make.set_defaults(extend=add_makers)
    args = cli.parse(["make", "blobs", "--out", "d", "--seed", "3"], parser)
    assert (args.maker, args.out, args.seed) == ("blobs", "d", 3)
    assert calls == [
        ("make", ["blobs", "--out", "d", "--seed", "3"]),
        ("blobs", ["--out", "d", "--seed", "3"]),
    ]
