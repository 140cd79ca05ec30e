"""Every packaged config composes and resolves, as `diffode <entry> <group>=<option> --cfg job --resolve` would.

The options are discovered from the package's conf/ directories (diffode.config.group_options), so a new
method, solver, grid or preset is covered without touching this file. Each option is composed alone over
its entry's defaults; every `_target_` it names must import; the launchers' composed configs resolve for
every entry; every experiment preset composes with its entry and passes the entry's checks (nothing runs).
"""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from diffode.config import CONF_PACKAGE, conf_root, group_options

ENTRIES = ("train", "eval")


def entry_groups(entry: str) -> list[str]:
    """The config groups of an entry's defaults list (conf/<entry>.yaml), read without Hydra."""
    cfg = OmegaConf.create(conf_root().joinpath(f"{entry}.yaml").read_text())
    return [k for d in cfg.defaults if not isinstance(d, str) for k in d]


def all_groups() -> list[str]:
    """Every group directory of the package (hydra/launcher included), however deep."""
    out = []

    def walk(node, prefix):
        for child in node.iterdir():
            if child.is_dir() and not child.name.startswith("_"):
                name = f"{prefix}{child.name}"
                if any(c.name.endswith(".yaml") for c in child.iterdir()):
                    out.append(name)
                walk(child, name + "/")

    walk(conf_root(), "")
    return sorted(out)


def preset_entry(name: str) -> str:
    """eval_* presets belong to `diffode eval`, the others to `diffode train` (conf/experiment/)."""
    return "eval" if name.startswith("eval_") else "train"


@pytest.fixture(scope="module")
def hydra_ctx():
    GlobalHydra.instance().clear()
    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        yield


def resolved(entry: str, overrides: list[str]) -> tuple[dict, dict]:
    """(the job config resolved as `--cfg job --resolve` prints it, Hydra's runtime choices)."""
    cfg = compose(entry, overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True), choices


def targets(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for v in node.values() for t in targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in targets(v)]
    return []


CASES = [(e, g, o) for e in ENTRIES for g in entry_groups(e) if g != "experiment" for o in group_options(g)]


def test_discovery_sees_every_group():
    groups = all_groups()
    used = {g for e in ENTRIES for g in entry_groups(e)} | {"hydra/launcher"}
    assert {"method", "source", "dataset", "net", "schedule", "solver", "grid", "trainer", "logger",
            "experiment", "debug", "hydra/launcher"} <= set(groups)
    assert set(groups) <= used, f"groups no entry uses: {sorted(set(groups) - used)}"
    assert len(CASES) > 60 and all(group_options(g) for g in groups)


@pytest.mark.parametrize("entry,group,option", CASES, ids=[f"{e}-{g}={o}" for e, g, o in CASES])
def test_option_composes_and_resolves(hydra_ctx, entry, group, option):
    from diffode.spec import locate

    cfg, choices = resolved(entry, [f"{group}={option}"])
    assert choices[group] == option
    if group == "method":
        assert cfg["method"]["name"] == option  # the runner finds the method by this name
        from diffode.methods.registry import get_method, typed_options

        spec = get_method(option)
        assert spec.name == option
        assert isinstance(typed_options(spec, cfg["method"]), spec.options)  # the YAML fills every field
    if group == "solver":
        from diffode.config import solver_config
        from diffode.core.solvers import get_solver

        assert get_solver(solver_config(option)[0]) is not None
    if group == "grid":
        from diffode.core.grids import GRIDS

        assert cfg["grid"]["name"] in GRIDS
    if group == "source":
        from diffode.models import SOURCE_KINDS

        assert cfg["source"]["kind"] in SOURCE_KINDS
    for t in targets(cfg):
        assert callable(locate(t)), t  # every _target_ imports


def test_dataset_roots_resolve_with_and_without_env(hydra_ctx, monkeypatch):
    """The `${oc.env:DIFFODE_DATA,...}` default: a home-relative path when unset, the variable when set."""
    monkeypatch.delenv("DIFFODE_DATA", raising=False)
    for name in ("cifar10", "mnist"):
        assert resolved("train", [f"dataset={name}"])[0]["dataset"]["root"] == "~/.cache/diffode/data"
    monkeypatch.setenv("DIFFODE_DATA", "/somewhere/data")
    assert resolved("train", ["dataset=mnist"])[0]["dataset"]["root"] == "/somewhere/data"


LAUNCH = [(e, l) for e in ENTRIES for l in group_options("hydra/launcher")]


@pytest.mark.parametrize("entry,launcher", LAUNCH, ids=[f"{e}-{l}" for e, l in LAUNCH])
def test_launcher_config_resolves(hydra_ctx, entry, launcher):
    over = [f"hydra/launcher={launcher}"]
    cfg = compose(entry, overrides=over, return_hydra_config=True)
    lc = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert cfg.hydra.sweep.dir  # (sweep.subdir needs a job number: multirun only)
    assert lc["_target_"].startswith("hydra_plugins.hydra_submitit_launcher")
    assert isinstance(lc["tasks_per_node"], int) and isinstance(lc["nodes"], int)
    if entry == "train" and lc["_target_"].endswith("SlurmLauncher"):  # one SLURM task per device
        cfg2 = compose(entry, overrides=[*over, "trainer=ddp_sim"], return_hydra_config=True)
        assert OmegaConf.to_container(cfg2.hydra.launcher, resolve=True)["tasks_per_node"] == cfg2.trainer.devices == 2
    elif entry == "eval":
        assert lc["tasks_per_node"] == 1 and lc["nodes"] == 1


PRESETS = group_options("experiment")


@pytest.mark.parametrize("name", PRESETS)
def test_experiment_preset_composes_and_resolves(hydra_ctx, name):
    entry = preset_entry(name)
    cfg, choices = resolved(entry, [f"experiment={name}"])
    assert choices["experiment"] == name
    from diffode.spec import locate

    for t in targets(cfg):
        assert callable(locate(t)), t


@pytest.mark.parametrize("name", [p for p in PRESETS if preset_entry(p) == "train"])
def test_train_preset_passes_the_runner_checks(hydra_ctx, name, tmp_path):
    """What `diffode train experiment=<name>` checks before compute accepts the preset as shipped."""
    from diffode.cli.train import prepare

    spec, options, ctx = prepare(compose("train", overrides=[f"experiment={name}", f"output_dir={tmp_path}"]))
    assert spec.name == compose("train", overrides=[f"experiment={name}"]).method.name


@pytest.mark.parametrize("name", [p for p in PRESETS if preset_entry(p) == "eval"])
def test_eval_preset_cells_validate(hydra_ctx, name, tmp_path):
    """Every cell of an eval preset is buildable and reachable for its model (eval_cifar10 needs a
    diffusers folder: covered in tests/test_real_data_paths.py)."""
    from diffode.evaluation.sweep import build_cells, validate_cells
    from diffode.models import load_model

    cfg = compose("eval", overrides=[f"experiment={name}"])
    if OmegaConf.is_missing(cfg.source, "path"):
        pytest.skip(f"experiment={name} needs source.path")
    cells = build_cells(cfg)
    _, unreachable = validate_cells(cells, load_model(cfg.source), cfg)
    assert cells and len(unreachable) < len(cells)


# -- the methods' options schemas ----------------------------------------------------------------------------

SCHEMA_REFUSALS = [  # (method, override, what Hydra's composition says)
    ("ld3", "method.bogus=1", "Key 'bogus' not in 'LD3Config'"),
    ("ld3", "method.teacher.bogus=1", "Key 'bogus' not in 'LD3Teacher'"),
    ("ld3", "method.nfe=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("ld3", "method.space=foo", "Invalid value 'foo', expected one of [lambda, t]"),
    ("ld3", "method.lpips_net=resnet", "expected one of [vgg, alex]"),
    ("denoiser", "method.prediction=nosuch", "expected one of [eps, x0, v, velocity, edm]"),
    ("reflow", "method.t_sampling=nosuch", "expected one of [uniform, lognormal]"),
    ("reflow", "method.teacher.bogus=1", "Key 'bogus' not in 'ReflowTeacher'"),
    ("denoiser", "method.ema.decay=abc", "could not be converted to Float"),
    ("denoiser", "method.betas=0.9", "Invalid value assigned: float is not a ListConfig"),
    ("gits", "method.metric=nosuch", "expected one of [dev, l2, l1]"),
    ("gits", "method.teacher.steps=many", "could not be converted to Integer"),
    ("amed", "method.objective=both", "expected one of [interval, endpoint]"),
    ("amed", "method.predictor.features=pixels", "expected one of [auto, bottleneck, times_only]"),
    ("amed", "method.M=1.5", "could not be converted to Integer"),
    ("progressive_distillation", "method.weighting=nosuch", "expected one of [snr_trunc, v_mse]"),
    ("consistency_distillation", "method.optimizer=sgd", "expected one of [radam, adam]"),
    ("consistency_distillation", "method.sample_steps=[1,x]", "could not be converted to Integer"),
]


@pytest.mark.parametrize("method,override,message", SCHEMA_REFUSALS, ids=[f"{m}-{o}" for m, o, _ in SCHEMA_REFUSALS])
def test_hydra_refuses_a_bad_method_option_when_it_composes(hydra_ctx, method, override, message):
    """An unknown key, a value of the wrong type and a value outside its choices never reach the runner."""
    from hydra.errors import ConfigCompositionException

    assert method in group_options("method"), f"no method {method}"
    with pytest.raises(ConfigCompositionException) as e:
        compose("train", overrides=[f"method={method}", override])
    assert message in str(e.value.__cause__), str(e.value.__cause__)


@pytest.mark.parametrize("method", group_options("method"))
def test_a_method_yaml_is_its_schema_and_the_one_place_of_its_defaults(method):
    """conf/method/<name>.yaml has exactly the schema's keys; the schema declares no default (MISSING); the typed
    options hold the YAML's values, choices as plain strings; diffode.config reads the YAML without `defaults`."""
    import dataclasses

    from diffode.config import group_config, method_defaults
    from diffode.methods.registry import get_method, method_options

    spec = get_method(method)
    yaml = group_config("method", method)
    assert "defaults" not in yaml and "defaults" not in method_defaults(method)
    assert set(yaml) == {f.name for f in dataclasses.fields(spec.options)}
    fields = dataclasses.fields(spec.options)
    assert all(f.default == "???" and f.default_factory is dataclasses.MISSING for f in fields)
    options = dataclasses.asdict(method_options(method))
    assert options == yaml
    assert all(type(v) is str for v in options.values() if isinstance(v, str))  # no Enum member leaks out


def test_the_choices_are_those_the_code_dispatches_on():
    from diffode.core.denoisers import PREDICTIONS
    from diffode.core.distillation import WEIGHTINGS
    from diffode.core.gits import METRICS
    from diffode.methods.denoiser.options import Prediction
    from diffode.methods.gits.options import Metric
    from diffode.methods.progressive_distillation.options import StudentOutput, Weighting

    assert tuple(Prediction.__members__) == PREDICTIONS and set(Weighting.__members__) == set(WEIGHTINGS)
    assert set(Metric.__members__) == set(METRICS) and set(StudentOutput.__members__) == {"auto", *PREDICTIONS}


@pytest.mark.parametrize("override,fragments", [
    ("method.bogus=1", ["method.bogus is not a key", "remove it", "conf/method/ld3.yaml"]),
    ("method.nfe=abc", ["method.nfe=abc", "could not be converted to Integer", "conf/method/ld3.yaml"]),
])
def test_the_console_script_says_a_refused_option_in_one_paragraph(tmp_path, override, fragments):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "diffode.cli", "train", "method=ld3", override, f"output_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=300)
    err = p.stderr.strip()
    assert p.returncode == 2 and err.startswith("diffode: ") and "Traceback" not in err and "\n\n" not in err, err
    assert all(f in " ".join(err.split()) for f in fragments), err


def test_registering_the_schemas_imports_no_lightning():
    """Hydra reads the schemas when it imports diffode.conf, in every entry: `diffode eval` composes no method
    and must not pay Lightning's import for them."""
    import json
    import subprocess
    import sys

    code = ("import json, sys, diffode.conf; from diffode.methods.registry import METHODS; "
            "print(json.dumps([sorted(METHODS), [m for m in ('lightning', 'torch') if m in sys.modules]]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    methods, heavy = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(methods) == set(group_options("method")) and heavy == [], (methods, heavy)
