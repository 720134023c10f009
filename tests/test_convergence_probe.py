"""The convergence bench's probe reads each held-out batch once per evaluation, and its values are those
of the trainer's evaluation and of a separate prediction pass; the PyTorch reference line gets GN2's
trained tasks from smilejax (``run.json``), not from re-deriving them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from smilejax.inputs import packing
from smilejax.models.gn2 import convergence as gn2_convergence
from smilejax.models.gn2.model import GN2Config

from smilejax import config, registry, trainer
from smilejax.bench import _convergence_probe
from smilejax.callbacks.base import Callback
from smilejax.loop import to_global
from tests.conftest import synthetic_ftag
from tests.helpers_gn2 import CONVERGENCE_TINY

EVAL_STEPS, EVERY, STEPS = 3, 2, 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    path, norm = synthetic_ftag(d, 900, seed=2)
    tree = {
        "base": "gn2",
        "data": {"path": str(path), "norm_dict": str(norm), "batch_size": 32, "read_threads": 1},
        "model": CONVERGENCE_TINY,
        "train": {"precision": "fp32"},
        "optimizer": {"lr": 1e-3},
        "logging": {"wandb": "off", "progress": False, "tensorboard": False},
    }
    (d / "tiny.yaml").write_text(yaml.safe_dump(tree))
    return d / "tiny.yaml"


class _CountingReads:
    """``trainer.Evaluation`` whose restarted iterator counts the batches taken from it."""

    def __init__(self, evaluation: trainer.Evaluation):
        self.evaluation, self.reads = evaluation, 0

    def restart(self):
        batches = self.evaluation.restart()
        while True:
            self.reads += 1
            yield next(batches)


class _Check(Callback):
    """After the probe's evaluations: the trainer's evaluation and a separate prediction pass of the same
    state on the same held-out batches (its own reader, so the probe's count stays its own)."""

    def __init__(self, cfg, probe: _convergence_probe.Probe):
        self.cfg, self.probe, self.expected = cfg, probe, {}
        self.evaluation = trainer.Evaluation(cfg)

    def _expect(self, loop, step: int) -> None:
        values = self.evaluation(loop.program, loop.state)
        predict = self.probe._predictor(loop.program)
        batches, outs = self.evaluation.restart(), []
        for _ in range(self.cfg.run.eval_steps):
            batch = to_global(loop.program.eval_batch_sharding, next(batches))
            outs.append(predict(loop.state.params, loop.state.rest, batch))
        joined = {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}
        self.expected[step] = values, self.probe.hook.quality(joined)

    def start(self, loop) -> None:
        self._expect(loop, loop.step)

    def step(self, loop, step: int) -> None:
        if step % EVERY == 0:
            self._expect(loop, step)


def test_probe_reads_each_held_out_batch_once_with_the_trainers_values(tiny, tmp_path):
    cfg = config.load(
        tiny,
        [
            f"run.steps={STEPS}",
            "run.eval_every=0",
            f"run.eval_steps={EVAL_STEPS}",
            "run.checkpoint_every=0",
            f"run.dir={tmp_path / 'run'}",
        ],
    )
    hook = registry.model(cfg.model.name).bench.convergence
    probe = _convergence_probe.Probe(cfg, hook, EVERY)
    reads = probe.evaluation = _CountingReads(probe.evaluation)
    check = _Check(cfg, probe)
    result = trainer.train(cfg, callbacks=[probe, check])
    assert result.exit_code == 0
    assert [p["step"] for p in probe.points] == [0, 2, 4]
    assert reads.reads == EVAL_STEPS * len(probe.points), "one read of each held-out batch per point"
    for point in probe.points:
        values, quality = check.expected[point["step"]]
        assert point["val_loss"] == values["eval/loss"]  # the same sums, in the same order
        for k, v in values.items():
            if k != "eval/loss":
                assert point["val_" + k.removeprefix("eval/")] == v, k
        for k, v in quality.items():
            assert point[k] == pytest.approx(v, rel=1e-6, nan_ok=True), k
    assert probe.points[-1]["val_loss"] < probe.points[0]["val_loss"]  # it trained


def test_probe_refuses_packed_held_out_batches(tiny, tmp_path):
    cfg = config.load(tiny, ["run.eval_steps=1", f"run.dir={tmp_path}"])
    probe = _convergence_probe.Probe(cfg, registry.model("gn2").bench.convergence, 1)
    plain = next(probe.evaluation.restart())
    packed, _ = packing.pack_padded(plain, slots=40, jets_per_row=8)
    assert packing.is_packed(packed) and not packing.is_packed(plain)

    class PackedReads:
        def restart(self):
            while True:
                yield packed

    probe.evaluation = PackedReads()
    loop = SimpleNamespace(program=SimpleNamespace(graphdef=None), state=None)  # refused before use
    with pytest.raises(ValueError, match="held-out batches are packed"):
        probe.evaluate(loop)


@pytest.mark.parametrize(
    "aux_tasks,keys,tasks",
    [
        ("auto", ("tracks", "valid", "flavour", "track_origin", "track_vertex"), ["jet", "origin", "vertex"]),
        ("auto", ("tracks", "valid", "flavour", "track_origin"), ["jet", "origin"]),
        ("auto", ("tracks", "valid", "flavour"), ["jet"]),
        ("off", ("tracks", "valid", "flavour", "track_origin", "track_vertex"), ["jet"]),
        ("on", ("tracks", "valid", "flavour", "track_origin", "track_vertex"), ["jet", "origin", "vertex"]),
    ],
)
def test_torch_options_carry_the_tasks_gn2_trains(aux_tasks, keys, tasks):
    """``run.json``'s loss settings name the tasks GN2's loss trains on a batch with ``keys``."""
    batch = {k: np.zeros((2, 3)) for k in keys}
    options = gn2_convergence.TORCH.options(GN2Config(aux_tasks=aux_tasks), batch)
    assert options["loss"]["tasks"] == tasks and "aux_tasks" not in options["loss"]


def test_torch_options_refuse_missing_labels_for_aux_tasks_on():
    with pytest.raises(ValueError, match="aux_tasks='on' needs batch key 'track_origin'"):
        gn2_convergence.TORCH.options(GN2Config(aux_tasks="on"), {"tracks": 0, "valid": 0, "flavour": 0})
