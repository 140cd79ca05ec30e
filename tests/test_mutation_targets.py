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
