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
        from diffode.methods.registry import get_method

        assert get_method(option).name == option
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
