"""Exact-answer tests for behaviour that mutation testing (make mutate) found unchecked: each test names
what it pins down and the independent answer it compares with."""
from __future__ import annotations

import torch

from diffode.core.stage import geometric_point

F64 = torch.float64


def test_geometric_point_defaults_to_the_lambda_midpoint():
    cur, nxt = torch.tensor(4.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    assert float(geometric_point()(0, cur, nxt, None)) == 2.0  # sqrt(4 * 1)
    assert float(geometric_point(0.25)(0, cur, nxt, None)) == 4.0 ** 0.75


def test_network_conditioning_values_of_each_schedule():
    """What a network trained under each schedule is conditioned on (the papers' c_noise / time inputs)."""
    from diffode.core.schedules import EDM, VE, VPCosine, VPLinear

    t = torch.tensor([0.002, 1.0, 80.0], dtype=F64)
    torch.testing.assert_close(EDM().noise_cond(t), 0.25 * torch.log(t), rtol=1e-15, atol=0)  # EDM's ln(sigma)/4
    tv = torch.tensor([1e-3, 0.5, 1.0], dtype=F64)
    for sch in (VPLinear(), VPCosine()):
        torch.testing.assert_close(sch.noise_cond(tv), 999.0 * tv, rtol=1e-15, atol=0)  # DDPM's 0..999 scale
    sigma_ve = 0.01 * (50.0 / 0.01) ** tv  # VE(): sigma_min (sigma_max / sigma_min)^t, NCSN++ takes log(sigma / 2)
    torch.testing.assert_close(VE().noise_cond(tv), torch.log(0.5 * sigma_ve), rtol=1e-13, atol=0)
