"""A model family from another package: ``toyfam``, written into a temporary folder with the dist-info a
pip install leaves (entry points in smilejax.models, .formats, .configs, .makers), trains, exports and
evaluates through the ``smilejax`` command line with nothing of it in smilejax. The README's "Adding a
model" points here: the package below is a complete family."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from smilejax import cli, config, metrics, registry, trained
from tests.conftest import ROOT, run_cli

# ---------------------------------------------------------------- the package, as its files

INIT = '''
"""toyfam: a small MLP classifier of Gaussian blobs, a smilejax model family in a package of its own."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from smilejax.models.spec import Evaluation, ModelSpec, Option


@dataclasses.dataclass
class ToyfamConfig:
    name: str = "toyfam"
    features: int = 4
    hidden: int = 32
    classes: int = 3


class Classifier(nnx.Module):
    def __init__(self, cfg: ToyfamConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        init = nnx.initializers.lecun_normal()
        self.hidden = nnx.Linear(
            cfg.features, cfg.hidden, dtype=dtype, rngs=rngs,
            kernel_init=nnx.with_partitioning(init, (None, "mlp")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",)),
        )
        self.out = nnx.Linear(
            cfg.hidden, cfg.classes, dtype=dtype, rngs=rngs,
            kernel_init=nnx.with_partitioning(init, ("mlp", None)),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.gelu(self.hidden(x))).astype(jnp.float32)


def loss(model, batch):
    logits = model(batch["x"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return ce, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def evaluate(trained, opts) -> dict:
    """Accuracy on the examples whose top probability reaches --min-confidence; a confusion matrix."""
    from smilejax.evaluation import predict

    src = predict.source(trained, opts.split)
    n = opts.jets or predict.available(src, trained.cfg.data.batch_size)
    forward = lambda model, batch: {"p": jax.nn.softmax(model(batch["x"]))}  # noqa: E731
    pairs = list(predict.batches(trained, src, forward, n, inputs=("x",)))
    label = np.concatenate([b["label"] for b, _ in pairs])
    p = np.concatenate([out["p"] for _, out in pairs])
    kept = p.max(-1) >= opts.model["min_confidence"]
    right = p.argmax(-1) == label
    classes = trained.cfg.model.classes
    confusion = np.zeros((classes, classes), int)
    np.add.at(confusion, (label[kept], p.argmax(-1)[kept]), 1)
    np.savetxt(opts.out / "confusion.csv", confusion, fmt="%d", delimiter=",")
    return {
        "min_confidence": opts.model["min_confidence"],
        "examples": int(n),
        "kept": int(kept.sum()),
        "accuracy": float(right[kept].mean()) if kept.any() else 0.0,
    }


def check(values) -> None:
    if not 0 <= values["min_confidence"] <= 1:
        raise ValueError(f"--min-confidence must be within [0, 1], got {values['min_confidence']}")


SPEC = ModelSpec(
    name="toyfam",
    config=ToyfamConfig,
    build=lambda cfg, *, rngs, dtype: Classifier(cfg, rngs=rngs, dtype=dtype),
    loss=loss,
    input_spec=lambda cfg, b: {"x": jax.ShapeDtypeStruct((b, cfg.features), jnp.float32)},
    evaluation=Evaluation(
        evaluate=evaluate,
        summary=lambda m: f"toyfam: accuracy {m['accuracy']:.3f} on {m['kept']} of {m['examples']}",
        options=(Option("--min-confidence", float, 0.0, "score only examples at least this sure"),),
        check=check,
        about="the blob classifier's accuracy",
    ),
    synthetic_labels=lambda cfg, inputs, rng: {
        "label": rng.integers(0, cfg.classes, len(inputs["x"])).astype(np.int32)
    },
)
'''

DATA = '''
"""The blobs format: one Gaussian blob per class, from an .npz file or generated from a seed."""

import dataclasses
from pathlib import Path

import numpy as np

from smilejax.inputs.spec import DataConfig, DatasetSpec


@dataclasses.dataclass
class BlobsConfig(DataConfig):
    format: str = "blobs"
    examples: int = 1024  # generated when path is not given
    features: int = 4
    classes: int = 3


def generate(n: int, features: int, classes: int, seed: int) -> dict[str, np.ndarray]:
    centers = 2.0 * np.random.default_rng(7).normal(size=(classes, features))
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, n).astype(np.int32)
    return {"x": (centers[label] + rng.normal(size=(n, features))).astype(np.float32), "label": label}


class BlobsSource:
    def __init__(self, cfg: BlobsConfig, split: str):
        path = cfg.eval_path if split == "eval" and cfg.eval_path else cfg.path
        if path is None:
            self.arrays = generate(cfg.examples, cfg.features, cfg.classes, seed=0 if split == "train" else 1)
            return
        if not Path(path).is_file():
            raise FileNotFoundError(f"data.path {path!r} does not exist")
        with np.load(path) as f:
            self.arrays = {"x": f["x"], "label": f["label"]}

    def __len__(self) -> int:
        return len(self.arrays["label"])

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}


SPEC = DatasetSpec(name="blobs", config=BlobsConfig, source=BlobsSource)
'''

MAKERS = '''
"""``smilejax data make toyfam-blobs``; numpy and the generator are imported when it runs."""

from smilejax.models.spec import Maker


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder for train.npz and eval.npz")
    parser.add_argument("--examples", type=int, default=1024, help="examples per split")
    parser.add_argument("--seed", type=int, default=0, help="the train split's seed; eval takes seed+1")


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from toyfam.data import generate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, seed in (("train", args.seed), ("eval", args.seed + 1)):
        np.savez(out / f"{split}.npz", **generate(args.examples, 4, 3, seed))
    data = f"data.path={out}/train.npz data.eval_path={out}/eval.npz"
    print(f"wrote {out}; train with: smilejax train toyfam {data}")
    return 0


BLOBS = Maker(
    about="Gaussian blobs for the toyfam classifier",
    add_arguments=add_arguments,
    run=run,
    description="Writes train.npz and eval.npz (x: [N, 4] float32, label: [N] int32) into --out.",
)
'''

CONFIG = {
    "run": {"steps": 60, "log_every": 20, "checkpoint_every": 0, "seed": 0},
    "data": {"format": "blobs", "batch_size": 64, "read_threads": 1},
    "model": {"name": "toyfam"},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "logging": {"wandb": "off", "tensorboard": False, "progress": False},
}

ENTRY_POINTS = """\
[smilejax.models]
toyfam = toyfam:SPEC

[smilejax.formats]
blobs = toyfam.data:SPEC

[smilejax.configs]
toyfam = toyfam.configs

[smilejax.makers]
toyfam-blobs = toyfam.makers:BLOBS
"""


def write_package(site: Path) -> None:
    files = {
        "toyfam/__init__.py": INIT,
        "toyfam/data.py": DATA,
        "toyfam/makers.py": MAKERS,
        "toyfam/configs/__init__.py": "",
        "toyfam/configs/toyfam.yaml": yaml.safe_dump(CONFIG, sort_keys=False),
        "toyfam-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: toyfam\nVersion: 0.1\n",
        "toyfam-0.1.dist-info/entry_points.txt": ENTRY_POINTS,
    }
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(textwrap.dedent(text).lstrip())


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The folder the package is installed in; this process sees it too (sys.path, the registry)."""
    site = tmp_path_factory.mktemp("site")
    write_package(site)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        registry.clear_cache()
        yield site
    registry.clear_cache()


def smilejax(site: Path, *args: str) -> str:
    """``python -m smilejax ARGS`` with ``site`` on PYTHONPATH (8 CPU devices); its stdout."""
    proc = run_cli(*args, timeout=240, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    assert proc.returncode == 0, f"smilejax {' '.join(args)}: rc={proc.returncode}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def run_dir(site, tmp_path_factory):
    """``smilejax train toyfam``: the packaged config by name, on generated blobs."""
    run = tmp_path_factory.mktemp("runs") / "toyfam"
    smilejax(site, "train", "toyfam", f"run.dir={run}", "run.steps=60")
    return run


# ---------------------------------------------------------------- tests


def test_its_names_and_config_are_found_like_smilejax_own(site, tmp_path):
    assert "toyfam" in registry.models() and "blobs" in registry.datasets()
    assert "toyfam-blobs" in registry.makers() and "toyfam" in config.packaged()
    assert registry.configs()["toyfam"] == site / "toyfam" / "configs" / "toyfam.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: toyfam\nmodel: {hidden: 8}\n")
    cfg = config.load(mine)
    assert type(cfg.model).__name__ == "ToyfamConfig" and cfg.model.hidden == 8
    assert type(cfg.data).__name__ == "BlobsConfig" and cfg.run.steps == 60
    with pytest.raises(KeyError, match="did you mean toyfam"):
        registry.model("toyfan")


def test_it_trains_from_its_packaged_config(run_dir):
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["name"] == "toyfam" and saved["data"]["format"] == "blobs"
    losses = {r["step"]: r["loss"] for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r}
    assert sorted(losses) == [20, 40, 60]
    assert losses[60] < 0.5 * losses[20], losses  # the blobs separate
    assert any(p.name == "60" for p in (run_dir / "checkpoints").iterdir())


def test_export_reproduces_the_trained_model(site, run_dir, tmp_path):
    repo = tmp_path / "repo"
    out = smilejax(site, "export", str(run_dir), "--out", str(repo), "--format", "stablehlo")
    assert "toyfam_jax" in out
    meta = json.loads((repo / "smilejax_export.json").read_text())
    assert set(meta["models"]) == {"toyfam_jax"}
    artifact = repo / "toyfam_jax" / "1" / "model.jaxexport"
    exported = jax.export.deserialize(bytearray(artifact.read_bytes()))
    x = np.random.default_rng(5).normal(size=(7, 4)).astype(np.float32)  # a batch size never compiled
    got = exported.call(x)
    got = got["output"] if isinstance(got, dict) else got
    expected = trained.load(run_dir).model(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_eval_takes_the_family_option(site, run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    printed = smilejax(site, "eval", str(run_dir), "--min-confidence", "0.9", "--out", str(out))
    assert "toyfam: accuracy" in printed
    got = json.loads((out / "metrics.json").read_text())
    assert got["model"] == "toyfam" and got["step"] == 60 and got["min_confidence"] == 0.9

    # the same numbers in this process, from the trained model and the eval split
    tm = trained.load(run_dir)
    src = registry.dataset("blobs").source(tm.cfg.data, "eval")
    batch = src.read(np.arange(got["examples"]))
    p = np.asarray(jax.nn.softmax(tm.model(jnp.asarray(batch["x"]))))
    kept = p.max(-1) >= 0.9
    assert got["examples"] == 1024 and got["kept"] == int(kept.sum()) < got["examples"]
    assert got["accuracy"] == pytest.approx(float(np.mean(p.argmax(-1)[kept] == batch["label"][kept])))
    confusion = np.loadtxt(out / "confusion.csv", delimiter=",")
    assert confusion.sum() == got["kept"] and np.trace(confusion) / got["kept"] == pytest.approx(
        got["accuracy"]
    )

    # the option is in RUN_DIR's help, and its check refuses a bad value with exit 2
    with pytest.raises(SystemExit):
        cli.parse(["eval", str(run_dir), "--help"])
    assert "--min-confidence MIN_CONFIDENCE" in capsys.readouterr().out
    assert cli.main(["eval", str(run_dir), "--min-confidence", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "--min-confidence must be within [0, 1], got 2.0" in capsys.readouterr().err


def test_data_make_runs_its_maker(site, tmp_path):
    out = tmp_path / "blobs"
    printed = smilejax(
        site, "data", "make", "toyfam-blobs", "--out", str(out), "--examples", "96", "--seed", "3"
    )
    assert "train with: smilejax train toyfam" in printed
    data = config.load("toyfam", [f"data.path={out}/train.npz", f"data.eval_path={out}/eval.npz"]).data
    train, evaluation = (registry.dataset("blobs").source(data, split) for split in ("train", "eval"))
    assert len(train) == len(evaluation) == 96
    batch = train.read(np.arange(96))
    assert batch["x"].shape == (96, 4) and batch["x"].dtype == np.float32 and set(batch["label"]) <= {0, 1, 2}
    assert not np.array_equal(batch["x"], evaluation.read(np.arange(96))["x"])  # two seeds
