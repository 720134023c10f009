"""``smilejax eval``: a family's evaluation hook and its own options, through the CLI's second stage."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from smilejax.models.spec import Evaluation, Option

from smilejax import cli, config, evaluation, trainer
from smilejax.commands import eval as eval_command
from tests import toy


def _check(values) -> None:
    if values["scale"] <= 0:
        raise ValueError(f"--scale must be positive, got {values['scale']}")


def _evaluate(trained, opts) -> dict:
    from smilejax.evaluation import predict

    src = predict.source(trained, opts.split)
    n = predict.available(src, trained.cfg.data.batch_size)
    n = n if opts.jets is None else min(opts.jets, n)
    forward = lambda model, batch: {"pred": model(batch["x"])}  # noqa: E731
    errors = [out["pred"] - batch["y"] for batch, out in predict.batches(trained, src, forward, n)]
    (opts.out / "note.txt").write_text("plots would go here\n")
    err = np.concatenate(errors)
    return {
        "examples": int(err.size),
        "scaled_mse": float(np.mean(err**2)) * opts.model["scale"],
        **opts.model,
    }


EVALUATED = dataclasses.replace(
    toy.MODEL,
    name="tests.test_eval_cli:EVALUATED",
    evaluation=Evaluation(
        evaluate=_evaluate,
        summary=lambda m: f"scaled mse {evaluation.cell(m['scaled_mse'], 8)}",
        options=(
            Option("--scale", float, 1.0, "factor on the mean squared error (default 1)"),
            Option("--tag-name", str, "none", "a label written into the metrics"),
        ),
        check=_check,
        about="The toy's mean squared error, scaled.",
    ),
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    tree = toy.config(
        run={"dir": str(run_dir), "steps": 2, "checkpoint_every": 2},
        model={"name": "tests.test_eval_cli:EVALUATED"},
    )
    trainer.train(config.load(tree))
    return run_dir


def test_family_options_reach_the_evaluation(run_dir, capsys):
    out = run_dir.parent / "scaled"
    code = cli.main(
        ["eval", str(run_dir), "--scale", "3", "--tag-name", "x", "--jets", "32", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 32 and metrics["scale"] == 3.0 and metrics["tag_name"] == "x"
    assert metrics["model"] == "tests.test_eval_cli:EVALUATED" and (out / "note.txt").is_file()
    assert "scaled mse" in capsys.readouterr().out
    plain = json.loads(
        evaluation.run(run_dir, evaluation.EvalOptions(out=run_dir / "plain", jets=32))[1].read_text()
    )
    assert plain["scale"] == 1.0 and plain["scaled_mse"] == pytest.approx(metrics["scaled_mse"] / 3)


def test_family_options_are_checked_and_named(run_dir, capsys):
    assert cli.main(["eval", str(run_dir), "--scale", "0"]) == 2
    assert "--scale must be positive, got 0.0" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown evaluation option.*fc; this model's: scale, tag_name"):
        evaluation.run(run_dir, evaluation.EvalOptions(out=run_dir / "x", model={"fc": 0.3}))
    with pytest.raises(SystemExit):  # another family's option is not this one's
        cli.main(["eval", str(run_dir), "--fc", "0.3"])
    assert "unrecognized arguments: --fc 0.3" in capsys.readouterr().err


def test_help_lists_the_family_options_of_run_dir(run_dir, capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", str(run_dir), "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "options of tests.test_eval_cli:EVALUATED's evaluation" in text
    assert "The toy's mean squared error, scaled." in text and "--scale SCALE factor on the" in text
    assert "examples (jets, events...)" in text
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--scale" not in text and "`smilejax eval RUN_DIR --help` lists those" in text


def test_a_model_without_evaluation_is_refused_before_loading(tmp_path, capsys):
    run_dir = tmp_path / "run"
    trainer.train(config.load(toy.config(run={"dir": str(run_dir), "steps": 2, "checkpoint_every": 2})))
    assert cli.main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "model 'tests.toy:MODEL' has no evaluation; families with one:" in err
    assert not (run_dir / "eval").exists()


def test_run_dir_is_found_among_the_arguments(run_dir, tmp_path):
    assert eval_command._run_dir(["--out", str(run_dir), str(run_dir), "--fc", "1"]) == run_dir
    assert eval_command._run_dir(["--step", "2", str(run_dir)]) == run_dir
    assert eval_command._run_dir(["eval", str(tmp_path)]) is None  # no config.yaml: nothing added
