"""Config loading: typed sections, dotted overrides, and errors that name the key."""

from __future__ import annotations

import pytest
import yaml

from smilejax import config, registry
from smilejax.config import ConfigError
from tests import toy

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


def test_defaults_and_overrides_are_typed():
    cfg = config.load(
        toy.config(),
        [
            "optimizer.lr=3e-4",
            "mesh.fsdp=4",
            "run.steps=200",
            "run.dir=runs/x",
            "model.hidden=64",
            "train.precision=bf16",
        ],
    )
    assert cfg.optimizer.lr == pytest.approx(3e-4) and isinstance(cfg.optimizer.lr, float)
    assert cfg.mesh.fsdp == 4 and cfg.run.steps == 200 and cfg.run.dir == "runs/x"
    assert cfg.model.hidden == 64 and type(cfg.model).__name__ == "ToyModelConfig"
    assert type(cfg.data).__name__ == "ToyDataConfig" and cfg.data.batch_size == 16
    assert cfg.train.precision == "bf16"


def test_int_widens_to_float():
    assert config.load(toy.config(), ["optimizer.lr=1"]).optimizer.lr == 1.0


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("optimizer.lrr=1e-3", ["optimizer.", "'lrr'", "'lr'"]),
        ("run.step=5", ["run.", "'step'", "'steps'"]),
        ("model.hiden=3", ["model.", "'hiden'", "'hidden'"]),
        ("optimiser.lr=1e-3", ["'optimiser'", "'optimizer'"]),
        ("data.bach_size=4", ["data.", "'bach_size'", "'batch_size'"]),
    ],
)
def test_misspelled_key_names_key_and_closest(override, names):
    with pytest.raises(ConfigError) as err:
        config.load(toy.config(), [override])
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.steps=ten", "run.steps must be int"),
        ("run.steps=1.5", "run.steps must be int"),
        ("optimizer.lr=fast", "optimizer.lr must be float"),
        ("logging.tensorboard=3", "logging.tensorboard must be bool"),
        ("optimizer.name=adam", "optimizer.name must be one of"),
        ("mesh.rules.batch=data", "mesh.rules.batch must be a list"),
        ("run.steps=0", "run.steps must be at least 1"),
        ("mesh.data=0", "mesh.data must be -1"),
    ],
)
def test_wrong_type_or_value_names_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config.load(toy.config(), [override])


def test_literal_error_suggests_closest_choice():
    with pytest.raises(ConfigError, match="did you mean 'adamw'"):
        config.load(toy.config(), ["optimizer.name=adamww"])


def test_bad_override_syntax_and_missing_sections():
    with pytest.raises(ConfigError, match="key=value"):
        config.load(toy.config(), ["optimizer.lr"])
    with pytest.raises(ConfigError, match=r"model\.name is missing"):
        config.load({"model": {}, "data": {"format": "tests.toy:DATA"}})
    with pytest.raises(ConfigError, match="unknown model 'gn3'"):
        config.load(toy.config(model={"name": "gn3"}))
    with pytest.raises(ConfigError, match=r"override 'optimizer.lr=\[1': the value is not valid YAML"):
        config.load(toy.config(), ["optimizer.lr=[1"])


def test_unknown_config_name_lists_packaged(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a packaged config"):
        config.read_yaml(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {name: gn2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        config.read_yaml(broken)


def test_saved_config_reloads_identically(tmp_path):
    cfg = config.load(toy.config(), ["optimizer.schedule=cosine", "mesh.tensor=2"])
    path = tmp_path / "config.yaml"
    config.save(cfg, path)
    again = config.load(path)
    assert config.to_dict(again) == config.to_dict(cfg)
    assert set(yaml.safe_load(path.read_text())) >= {"run", "data", "model", "optimizer", "mesh", "logging"}


def test_yaml_off_means_the_word_off():
    assert config.load(toy.config(), ["logging.wandb=off"]).logging.wandb == "off"


def test_comma_list_argument_types_name_what_is_wrong():
    import argparse

    from smilejax.commands.common import choice_list, int_list

    assert int_list(0)("0,2, 4") == [0, 2, 4] and int_list(1)("8") == [8]
    for bad, minimum, message in (
        ("1,x", 0, "expected comma-separated integers"),
        ("0,2", 1, ">= 1"),
        ("", 0, ">= 0"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            int_list(minimum)(bad)
    assert choice_list(("http", "grpc"))("grpc, http") == ["grpc", "http"]
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown \['ftp'\]; choose from http, grpc"):
        choice_list(("http", "grpc"))("http,ftp")


def test_user_yaml_starts_from_a_packaged_config(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("base: gn2\nmodel: {embed: 48}\nrun: {steps: 7}\n")
    cfg, packaged = config.load(user), config.load("gn2")
    assert cfg.model.embed == 48 and cfg.run.steps == 7
    # everything else is gn2's, nested sections merged key by key
    assert config.to_dict(cfg) == config.to_dict(config.load("gn2", ["model.embed=48", "run.steps=7"]))
    assert cfg.model.heads == packaged.model.heads and cfg.data == packaged.data


def test_base_path_is_relative_to_the_file_and_chains(tmp_path, monkeypatch):
    (tmp_path / "common").mkdir()
    (tmp_path / "exp").mkdir()
    rules = {"batch": ["data", "fsdp"], "embed": ["fsdp"]}
    (tmp_path / "common" / "toy.yaml").write_text(
        yaml.safe_dump(toy.config(run={"eval_every": 4}, mesh={"rules": rules}))
    )
    (tmp_path / "exp" / "middle.yaml").write_text(
        "base: ../common/toy.yaml\noptimizer: {lr: 0.5}\nmesh: {rules: {batch: [data]}}\n"
    )
    (tmp_path / "exp" / "leaf.yaml").write_text("base: middle.yaml\nrun: {steps: 3}\n")
    monkeypatch.chdir(tmp_path / "common")  # the bases resolve from the files, not from here
    cfg = config.load(tmp_path / "exp" / "leaf.yaml")
    assert cfg.run.steps == 3 and cfg.run.eval_every == 4 and cfg.run.log_every == 1
    assert cfg.optimizer.lr == 0.5 and cfg.optimizer.name == "adamw"
    assert cfg.mesh.rules == {"batch": ["data"], "embed": ["fsdp"]}  # a list replaces; a mapping merges
    assert "base" not in yaml.safe_load(yaml.safe_dump(config.to_dict(cfg)))


def test_base_cycle_and_missing_base_are_refused_by_name(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\nrun: {steps: 2}\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        config.read_yaml(a)
    b.write_text("base: gn22\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: base 'gn22' is neither a file .* did you mean gn2"):
        config.read_yaml(a)
    b.write_text("base: [gn2]\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: base must be a packaged config name"):
        config.read_yaml(a)


def test_every_config_problem_is_reported_at_once():
    tree = toy.config(run={"stepz": 5, "log_every": "often"}, optimizer={"lrr": 1e-3, "name": "adamm"})
    tree["model"]["hiden"] = 3
    tree["loging"] = {}
    with pytest.raises(ConfigError) as err:
        config.load(tree, ["train.precision=fp64"])
    problems = err.value.problems
    assert len(problems) == 7, problems
    assert str(err.value).startswith("7 problems:\n  ")
    for expected in (
        "unknown config key 'loging': did you mean 'logging'",
        "unknown config key run.'stepz': did you mean 'steps'",
        "run.log_every must be int, got str 'often'",
        "unknown config key optimizer.'lrr': did you mean 'lr'",
        "optimizer.name must be one of 'adamw', 'lion', 'lamb', got 'adamm' (did you mean 'adamw'?)",
        "unknown config key model.'hiden': did you mean 'hidden'",
        "train.precision must be one of 'fp32', 'bf16', got 'fp64'",
    ):
        assert any(expected in p for p in problems), (expected, problems)


def test_value_checks_and_bad_overrides_are_reported_together():
    with pytest.raises(ConfigError) as err:
        config.load(toy.config(), ["run.steps=0", "mesh.data=0", "optimizer.lr=-1"])
    assert [p.split(" ")[0] for p in err.value.problems] == ["run.steps", "mesh.data", "optimizer.lr"]
    with pytest.raises(ConfigError) as err:
        config.load(toy.config(), ["run.steps", "optimizer.lr=[1", "run.seed=1"])
    assert len(err.value.problems) == 2 and "key=value" in err.value.problems[0]


def test_field_keys_name_every_section_field():
    keys = config.field_keys(toy.config())
    assert {"run.steps", "optimizer.lr", "mesh.rules", "model.hidden", "data.batch_size"} <= set(keys)
    assert "model.hidden" not in config.field_keys()  # no model named: the fixed sections only


def test_type_and_value_problems_come_in_one_message():
    """The value checks of the sections that built are reported with the type problems of the others,
    not only once those are fixed."""
    with pytest.raises(ConfigError) as err:
        config.load(toy.config(), ["run.steps=0", "optimizer.lr=fast", "mesh.data=0"])
    assert [p.split(" ")[0] for p in err.value.problems] == ["optimizer.lr", "run.steps", "mesh.data"]
    assert "optimizer.lr must be float, got str 'fast'" in err.value.problems[0]


def test_class_dict_and_model_class_weights_are_refused_with_the_other_problems(tmp_path):
    """The data format's conflict with the model section is a config problem, found when the config loads
    (before a run directory exists), with the config's other problems."""
    class_dict = tmp_path / "class_dict.yaml"
    class_dict.write_text(yaml.safe_dump({"jets": {"flavour_label": [1.0, 2.0, 3.0, 4.0]}}))
    both = [f"data.class_dict={class_dict}", "model.class_weights={jet: [1, 1, 1, 1]}"]
    with pytest.raises(ConfigError) as err:
        config.load("gn2", [*both, "run.steps=0"])
    assert len(err.value.problems) == 2, err.value.problems
    assert err.value.problems[0] == "run.steps must be at least 1, got 0"
    assert err.value.problems[1] == (
        f"data.class_dict ({class_dict}) and model.class_weights both give class weights; keep one"
    )
    # either one alone loads
    assert config.load("gn2", both[:1]).data.class_dict == str(class_dict)
    assert config.load("gn2", both[1:]).model.class_weights == {"jet": [1.0, 1.0, 1.0, 1.0]}


# ---------------------------------------------------------------- plug-ins through entry points


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """install(dist, {group: {name: value}}, {relative path: text}): a package as pip would have left
    it (files plus ``<dist>-0.1.dist-info`` with its entry points) on sys.path, seen by the registry."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.clear_cache()

    def install(dist: str, groups: dict[str, dict[str, str]], files: dict[str, str]) -> None:
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        info = tmp_path / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        sections = (
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in groups.items()
        )
        (info / "entry_points.txt").write_text("\n".join(sections))
        registry.clear_cache()

    yield install
    registry.clear_cache()


def test_packaged_configs_and_families_come_from_entry_points():
    assert {"gn2", "mlpf"} <= set(config.packaged())
    assert registry.configs()["gn2"].parts[-3:] == ("gn2", "configs", "gn2.yaml")
    assert {"gn2", "mlpf"} <= set(registry.models()) and "spec" not in registry.models()
    assert {"ftag_h5", "mlpf_tfds"} <= set(registry.datasets()) and "pipeline" not in registry.datasets()
    makers = registry.makers()  # names without importing a maker
    assert {"ftag-synthetic", "mlpf-pythia"} <= set(makers)
    with pytest.raises(KeyError, match=r"unknown data maker 'ftag-synthetik'; did you mean ftag-synthetic\b"):
        makers["ftag-synthetik"]
    close = r"unknown model 'gn3'; did you mean [^?]*\bgn2\b[^?]*\? known: .*gn2, .*mlpf"
    with pytest.raises(KeyError, match=close):
        registry.model("gn3")
    assert str(registry.RegistryError("no quotes")) == "no quotes"


def test_a_plugin_package_adds_configs_and_a_model(installed, tmp_path):
    spec_line = "from tests.toy import MODEL as SPEC\n"
    installed(
        "toyplug",
        {"smilejax.configs": {"toyplug": "toyplug.configs"}, "smilejax.models": {"toyplug": "toyplug:SPEC"}},
        {
            "toyplug/__init__.py": spec_line,
            "toyplug/configs/__init__.py": "",
            "toyplug/configs/toyplug.yaml": yaml.safe_dump(toy.config(run={"steps": 5})),
            "toyplug/configs/toyplug-long.yaml": "base: toyplug\nrun: {steps: 50}\n",
        },
    )
    assert {"gn2", "toyplug", "toyplug-long"} <= set(config.packaged())
    assert registry.model("toyplug") is toy.MODEL and "toyplug" in registry.models()
    assert config.load("toyplug-long").run.steps == 50  # a packaged base by name, across packages too
    user = tmp_path / "mine.yaml"
    user.write_text("base: toyplug-long\noptimizer: {lr: 0.5}\n")
    cfg = config.load(user)
    assert cfg.run.steps == 50 and cfg.optimizer.lr == 0.5 and cfg.model.hidden == 32


def test_one_config_name_in_two_packages_names_both(installed):
    installed(
        "clash",
        {"smilejax.configs": {"clash": "clash_cfgs"}},
        {"clash_cfgs/__init__.py": "", "clash_cfgs/gn2.yaml": "run: {steps: 1}\n"},
    )
    with pytest.raises(ConfigError) as err:
        config.load("gn2")
    message = str(err.value)
    assert "packaged config 'gn2' is in two packages" in message
    assert "clash_cfgs/gn2.yaml" in message and "from clash 0.1" in message
    assert "gn2/configs/gn2.yaml" in message and "from smilejax " in message


def test_a_broken_or_clashing_entry_point_is_named_with_its_distribution(installed):
    installed(
        "brokenplug",
        {
            "smilejax.models": {
                "broken": "brokenplug_model:SPEC",
                "notaspec": "brokenplug_ok:SPEC",
                "fine": "tests.toy:MODEL",
            },
            "smilejax.makers": {"broken-maker": "brokenplug_ok:MISSING"},
        },
        {"brokenplug_model.py": "import no_such_module_here\n", "brokenplug_ok.py": "SPEC = 3\n"},
    )
    with pytest.raises(KeyError) as err:
        registry.model("broken")
    assert str(err.value) == (
        "the smilejax.models entry point broken = brokenplug_model:SPEC (from brokenplug 0.1) does not "
        "load: ModuleNotFoundError: No module named 'no_such_module_here'"
    )
    with pytest.raises(KeyError, match="model 'notaspec' is a int, not a ModelSpec"):
        registry.model("notaspec")
    with pytest.raises(
        KeyError, match=r"broken-maker = brokenplug_ok:MISSING \(from brokenplug 0\.1\).*Attr"
    ):
        registry.makers()["broken-maker"]
    with pytest.raises(ConfigError, match="does not load: ModuleNotFoundError"):
        config.load(toy.config(model={"name": "broken"}))
    assert registry.model("fine") is toy.MODEL  # the others still load

    installed("clashplug", {"smilejax.models": {"gn2": "tests.toy:MODEL"}}, {})
    with pytest.raises(KeyError, match=r"smilejax\.models 'gn2' is registered twice") as err:
        registry.model("gn2")
    assert "tests.toy:MODEL (from clashplug 0.1)" in str(err.value)
    assert "smilejax.models.gn2:SPEC (from smilejax " in str(err.value)
