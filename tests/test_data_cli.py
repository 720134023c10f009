"""``smilejax data make|norm|check`` through the real CLI."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import yaml
from smilejax.inputs import ftag_h5 as fh
from smilejax.models.gn2 import make_synthetic as fs

from smilejax import config, trainer
from tests.conftest import run_cli


def test_make_synthetic_then_norm_and_check(tmp_path):
    out = tmp_path / "syn.h5"
    proc = run_cli("data", "make", "ftag-synthetic", "--out", str(out), "--jets", "400", "--seed", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    jets, tracks = fs.generate(400, 4)
    with h5py.File(out, "r", locking=False) as f:
        np.testing.assert_array_equal(f["jets"][:], jets)
        written = f["tracks"][:]
    for name in fs.TRACK_DTYPE.names:  # field by field: NaN padding compares equal
        np.testing.assert_array_equal(written[name], tracks[name], err_msg=name)
    flav = np.bincount(jets["flavour_label"], minlength=4)
    assert f"wrote 400 jets (b {flav[0]}, c {flav[1]}" in proc.stdout

    norm = tmp_path / "norm.yaml"
    proc = run_cli("data", "norm", str(out), "--out", str(norm), "--jets", "300")
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = fh.load_norm_dict(norm)
    expected = fh.compute_norm_dict(str(out), max_jets=300)
    # the ATLAS names by default, those the gn2 recipe reads: its input pipeline takes the dict as it is
    assert set(written["tracks"]) == set(fh.GN2_TRACK_VARS)
    assert set(written["jets"]) == {"pt_btagJes", "eta_btagJes"}
    for group, variables in expected.items():
        for var, d in variables.items():
            np.testing.assert_allclose(
                [written[group][var]["mean"], written[group][var]["std"]], [d["mean"], d["std"]]
            )
    gn2 = config.load("gn2", [f"data.path={out}", f"data.norm_dict={norm}", "data.batch_size=16"])
    batch = next(iter(trainer.make_inputs(gn2, "train")))
    assert batch["tracks"].shape[-1] == len(fh.GN2_TRACK_VARS) + 2 and np.isfinite(batch["tracks"]).all()

    proc = run_cli("data", "norm", str(out), "--out", str(tmp_path / "plain.yaml"), "--jet-vars", "pt,eta")
    assert proc.returncode == 0 and set(fh.load_norm_dict(tmp_path / "plain.yaml")["jets"]) == {"pt", "eta"}

    proc = run_cli("data", "check", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = yaml.safe_load(proc.stdout)[str(out)]
    assert report["jets"] == 400 and report["flavours"] == flav.tolist() and report["aux"] is True
    assert report["tracks"] == int(tracks["valid"].sum())


def test_check_reports_a_nan_and_exits_2(tmp_path):
    good = fs.make(tmp_path / "good.h5", 300, seed=1)
    bad = tmp_path / "bad.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "r+", locking=False) as f:
        tracks = f["tracks"][:]
        slot = int(np.argmax(tracks["valid"][7]))
        tracks["d0"][7, slot] = np.nan
        f["tracks"][...] = tracks
    proc = run_cli("data", "check", str(good), str(bad))
    assert proc.returncode == 2
    report = yaml.safe_load(proc.stdout)
    assert report[str(good)]["jets"] == 300, "the good file is still reported"
    assert "tracks/d0 at row 7" in report[str(bad)]["error"]
    assert str(bad) in proc.stderr

    proc = run_cli("data", "check", str(tmp_path / "missing.h5"))
    assert proc.returncode == 2 and "missing.h5: no such file" in proc.stdout

    proc = run_cli("data", "norm", str(good), "--out", str(tmp_path / "n.yaml"), "--track-vars", "d0,nope")
    assert proc.returncode == 2 and "'nope'" in proc.stderr and str(good) in proc.stderr
    assert not (tmp_path / "n.yaml").exists()


def test_make_pythia_and_plot(tmp_path):
    out = tmp_path / "tt.h5"
    proc = run_cli(
        "data", "make", "ftag-pythia", "--out", str(out), "--jets", "30", "--workers", "1", "--seed", "5",
        "--pileup", "0", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 30 jets" in proc.stdout and "with 1 workers" in proc.stdout
    with h5py.File(out, "r", locking=False) as f:
        assert f["jets"].shape == (30,) and f.attrs["seed"] == 5

    png = tmp_path / "plots" / "tt.png"
    proc = run_cli("data", "check", str(out), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_check_plot_axes_carry_units_and_labels(tmp_path):
    from smilejax.inputs.ftag_h5 import commands

    path = fs.make(tmp_path / "syn.h5", 300, seed=2)
    fig = commands._plot([str(path)], fh.FtagConfig(), str(tmp_path / "check.png"))
    assert (tmp_path / "check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_field = {ax.get_title(): ax for ax in fig.axes}
    assert by_field["d0"].get_xlabel() == "$d_0$ [mm]"
    assert by_field["z0SinTheta"].get_xlabel().endswith("[mm]")
    pt = by_field["pt"]
    assert pt.get_xlabel() == "track $p_T$ [GeV]" and pt.get_xscale() == "log"
    with h5py.File(path, "r", locking=False) as f:
        tracks, flavour = f["tracks"][:], f["jets"].fields("flavour_label")[:]
    # the file holds MeV; the b jets' step histogram (the first) is their tracks' pT in GeV
    b_tracks = tracks["valid"] & (flavour == 0)[:, None]
    gev = np.clip(tracks["pt"][b_tracks] / 1e3, 0.5, 100)
    density, _ = np.histogram(gev, np.geomspace(0.5, 100, 41), density=True)
    step = pt.patches[0].get_path().vertices
    np.testing.assert_allclose(step[1:-1:2, 1], density, rtol=1e-6)
    for ax in fig.axes:  # every panel, the flavour counts included, says what its axes show
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["Normalised number of tracks"] * 2


def test_help_explains_each_action():
    proc = run_cli("data", "--help")
    assert proc.returncode == 0 and all(a in proc.stdout for a in ("make", "norm", "check"))
    proc = run_cli("data", "make", "ftag-pythia", "--help")
    assert proc.returncode == 0
    words = " ".join(proc.stdout.split())  # argparse wraps the description
    assert "--workers" in words and "Needs: pip install -c launch/locks/venv.txt -e '.[pythia]'" in words
    proc = run_cli("data", "check", "--help")
    assert "exit codes" in proc.stdout and "--plot" in proc.stdout
    proc = run_cli("data", "make", "ftag-synthetic", "--out", "x.h5", "--jets", "0")
    assert proc.returncode == 2 and "--jets must be at least 1" in proc.stderr


def test_make_mlpf_synthetic_then_refuse_to_overwrite(tmp_path):
    out = tmp_path / "tfds"
    args = ("data", "make", "mlpf-synthetic", "--out", str(out), "--events", "40", "--config", "3")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 40 events (train 36, test 4;" in proc.stdout
    assert (out / "clic_edm_qq_pf" / "3" / "3.1.0" / "dataset_info.json").is_file()
    again = run_cli(*args)
    assert again.returncode == 2 and "exists" in again.stderr
    assert run_cli(*args, "--overwrite").returncode == 0


def test_data_loads_only_what_its_arguments_name(monkeypatch, capsys):
    """Makers and the formats' commands come from the registry, loaded in the CLI's second stage: a
    maker's module (a model family's package may import JAX) only for ``data make`` of that maker."""
    import pytest
    from smilejax.models.spec import Maker

    from smilejax import cli, registry

    loaded: list[str] = []

    class Makers(dict):  # names are free, a lookup loads (as registry.makers())
        def __getitem__(self, name: str) -> Maker:
            loaded.append(name)
            if name == "broken":
                raise registry.RegistryError("the smilejax.makers entry point broken = x:Y does not load")
            return super().__getitem__(name)

    def add_arguments(parser) -> None:
        parser.add_argument("--n", type=int, required=True)

    def run(args) -> int:
        print(f"made {args.n} with {args.maker}")
        return 0

    def register_tools(actions) -> None:
        actions.add_parser("tidy", help="tidy the files").set_defaults(run=lambda args: 0)

    makers = Makers(
        a=Maker("makes a's", add_arguments, run), b=Maker("makes b's", add_arguments, run, "All b.")
    )
    makers["broken"] = None
    monkeypatch.setattr(registry, "makers", lambda: makers)
    monkeypatch.setattr(registry, "data_commands", lambda: [register_tools])

    args = cli.parse(["data", "make", "b", "--n", "3"])
    assert loaded == ["b"] and args.run(args) == 0 and "made 3 with b" in capsys.readouterr().out
    loaded.clear()
    assert cli.parse(["data", "tidy"]).action == "tidy" and loaded == []
    with pytest.raises(SystemExit):
        cli.parse(["data", "make", "--help"])
    text = capsys.readouterr().out
    assert "makes a's" in text and "makes b's" in text and "does not load" in text
    with pytest.raises(SystemExit):
        cli.parse(["data", "--help"])
    text = capsys.readouterr().out
    assert all(word in text for word in ("make", "generate a dataset", "tidy the files"))
    assert cli.main(["data", "make", "broken"]) == 2
    assert "broken = x:Y does not load" in capsys.readouterr().err
