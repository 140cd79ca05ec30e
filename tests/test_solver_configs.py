"""Solver option defaults live in the solver functions' signatures (the registry reads them from there);
conf/solver/<name>.yaml states them to Hydra users. These tests hold the registered defaults against the
YAML files, so a default changed on one side only fails here: the Python API and the command line can
never disagree. A file may differ from its solver only where it is a named variant (below)."""
import pytest

from diffode.config import group_config, group_options
from diffode.core.solvers import SOLVERS

# conf/solver/<file>.yaml that is a variant of another solver: the options it sets on purpose.
VARIANTS = {"dpmpp_3m_official": ("dpmpp_3m", {"coefficients": "official"}),
            "pc_ddim": ("pc", {"predictor": "ddim", "snr": 0.17}),
            "pc_euler_maruyama": ("pc", {"predictor": "euler_maruyama"})}
# Registered defaults that are not command-line settings, so no YAML states them (with the reason).
NOT_IN_YAML = {("rk45", "max_nfe"): "a safety cap on the adaptive solver's calls, not a setting to tune"}


def test_every_registered_solver_has_its_yaml():
    files = set(group_options("solver"))
    missing = sorted(set(SOLVERS) - files)
    assert not missing, f"registered solvers without conf/solver/<name>.yaml: {missing}"
    for name in SOLVERS:
        assert group_config("solver", name)["name"] == name


@pytest.mark.parametrize("name", group_options("solver"))
def test_yaml_states_the_registered_defaults(name):
    cfg = group_config("solver", name)
    solver, changed = VARIANTS.get(name, (name, {}))
    assert cfg["name"] == solver, f"conf/solver/{name}.yaml names {cfg['name']!r}, expected {solver!r}"
    defaults = SOLVERS[solver].defaults
    options = cfg.get("options") or {}
    unknown = set(options) - set(defaults)
    assert not unknown, f"conf/solver/{name}.yaml sets options {unknown} that {solver} does not take"
    # Every setting with a value is stated, and stated as registered (variants: their own values).
    expected = {k: v for k, v in defaults.items() if v is not None and (solver, k) not in NOT_IN_YAML}
    expected.update(changed)
    stated = {k: v for k, v in options.items() if v is not None}
    assert stated == expected, f"conf/solver/{name}.yaml options {stated} != registered defaults {expected}"
    # A null in the YAML must be a registered None (not a default the file forgot to restate).
    for k, v in options.items():
        if v is None:
            assert defaults[k] is None, f"conf/solver/{name}.yaml: {k}: null, registered {defaults[k]!r}"


def test_register_refuses_defaults_that_disagree_with_the_signature():
    from diffode.core.solvers.registry import register

    def f(denoiser, x, sigmas, *, net_sigmas=None, callback=None, k=1):
        return x

    with pytest.raises(ValueError, match="disagrees with the function's signature"):
        register("_test_disagree", n_calls=lambda steps, **o: steps, order=1, defaults=dict(k=2))(f)
    assert "_test_disagree" not in SOLVERS
