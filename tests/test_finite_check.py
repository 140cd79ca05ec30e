"""sample()'s cheap NaN/Inf check: one reduction per step, read once after the solve."""
from __future__ import annotations

import pytest
import torch

from diffode.core.sample import _finite_flag, sample


def test_flag_catches_nan_and_inf_and_passes_large_finite_states():
    big = torch.full((4096,), 1.0e30, dtype=torch.float32)  # huge for a sampling state, still summable
    assert bool(torch.isfinite(_finite_flag(big)))
    half = torch.full((4096,), 60000.0, dtype=torch.float16)  # a float16 sum would overflow: float32 accumulation
    assert bool(torch.isfinite(_finite_flag(half)))
    for bad in (float("nan"), float("inf"), -float("inf")):
        h = half.clone()
        h[7] = bad
        assert not bool(torch.isfinite(_finite_flag(h)))
        x = big.clone()
        x[1234] = bad
        assert not bool(torch.isfinite(_finite_flag(x)))
    pair = torch.tensor([float("inf"), -float("inf")], dtype=torch.float64)  # inf - inf: nan, still caught
    assert not bool(torch.isfinite(_finite_flag(pair)))


def test_flag_keeps_no_graph():
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    assert not _finite_flag(x * 2).requires_grad


# the 4th denoiser call returns Inf: dpmpp_3m makes it at step 3; unipc_bh1 (one call before step 0, then one
# at the end of each step, used by its corrector) at step 2; heun (2 calls per step) at step 1
@pytest.mark.parametrize("solver,nfe,opts,first_bad", [("dpmpp_3m", 8, {}, 3), ("unipc_bh1", 8, {}, 2),
                                                      ("heun", 9, {"euler_last": True}, 1)])
def test_first_bad_step_named_in_float32(solver, nfe, opts, first_bad):
    calls = []

    def D(x, s):
        calls.append(1)
        return x * 0 + (float("inf") if len(calls) == 4 else 0.0)

    x_T = 80.0 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0))  # float32 state
    _, info = sample(lambda x, s: x * 0, x_T, solver, nfe=nfe, grid="logsnr", return_info=True, **opts)
    sig = info["sigmas"]
    with pytest.raises(FloatingPointError, match=f"NaN/Inf values at step {first_bad} "
                                                 f"\\(sigma={float(sig[first_bad + 1]):.6g}\\)"):
        sample(D, x_T, solver, nfe=nfe, grid="logsnr", **opts)
