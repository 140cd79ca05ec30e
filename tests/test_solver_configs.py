"""Solver option defaults live in the solver functions' signatures (the registry reads them from there);
conf/solver/<name>.yaml shows them to Hydra users and may only differ where the file is a named variant
of another solver (dpmpp_3m_official). So the Python API and the command line can never disagree."""
import pytest

from diffode.config import group_config, group_options
from diffode.core.solvers import SOLVERS
from diffode.core.solvers.registry import signature_defaults


@pytest.mark.parametrize("name", group_options("solver"))
def test_solver_yaml_agrees_with_the_signature(name):
    cfg = group_config("solver", name)
    spec = SOLVERS[cfg["name"]]
    assert spec.defaults == signature_defaults(spec.fn)
    options = cfg.get("options") or {}
    unknown = set(options) - set(spec.defaults)
    assert not unknown, f"conf/solver/{name}.yaml sets options {unknown} that {cfg['name']} does not take"
    if cfg["name"] == name:  # not a variant: every value is the function's own default
        differ = {k: (v, spec.defaults[k]) for k, v in options.items() if spec.defaults[k] != v}
        assert not differ, f"conf/solver/{name}.yaml disagrees with the signature of {cfg['name']}: {differ}"


def test_register_refuses_defaults_that_disagree_with_the_signature():
    from diffode.core.solvers.registry import register

    def f(denoiser, x, sigmas, *, net_sigmas=None, callback=None, k=1):
        return x

    with pytest.raises(ValueError, match="disagrees with the function's signature"):
        register("_test_disagree", n_calls=lambda steps, **o: steps, order=1, defaults=dict(k=2))(f)
    assert "_test_disagree" not in SOLVERS
