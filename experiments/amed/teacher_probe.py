"""Probe: how the AMED teacher (M, solver) and the grid change the trained AMED-Solver / plugins on a mixture.

    python experiments/amed/teacher_probe.py gmm2d     # 500 held-out samples, RMSE vs the exact PF-ODE's dopri8 solve

A script because it reads the module's internals, not only what it exports: beside each trained student's
endpoint RMSE it prints the teacher's (AMEDModule.teacher_points) and that of the same step without a
predictor (r = 1/2). Each variant is built and fitted as the runner does: check, seed_everything(0), build, the
method's Trainer settings (the recorded probe drew every variant's initial weights from torch's unseeded
generator, one after the other, so its trained figures moved with whatever ran or was imported before).
"""
import sys
from pathlib import Path

import lightning as L
import torch

import diffode
from diffode.methods.amed import build, check, resolve, trainer_overrides
from diffode.methods.registry import Context, method_options
from diffode.metrics.gmm import endpoint_rmse, reference_solve
from diffode.models import initial_noise

VARIANTS = [("amed", 5, 1, None, "edm"), ("amed", 5, 3, None, "edm"), ("amed", 5, 7, None, "edm"),
            ("amed", 5, 3, "dpm_solver_3", "edm"), ("amed", 5, 3, None, "logsnr"), ("ipndm", 5, 2, None, "edm"),
            ("ipndm", 5, 5, None, "edm"), ("dpm_solver_2", 5, 2, None, "edm"), ("dpm_solver_2", 5, 5, None, "edm"),
            ("dpm_solver_2", 5, 5, None, "logsnr")]  # student, NFE, M, teacher solver, grid


def main(preset: str):
    torch.set_num_threads(1)
    model = diffode.load_model({"kind": "gmm", "preset": preset})
    x_T = initial_noise(model.shape, range(500), model.sigma_max)
    ref = reference_solve(model.denoiser, x_T, model.sigma_max, model.sigma_min)
    for student, nfe, M, teacher, grid in VARIANTS:
        o = method_options("amed", student=student, nfe=nfe, afs=bool(nfe % 2), M=M, teacher_solver=teacher,
                           grid=grid)
        ctx = Context(out_dir=Path("."), teacher=model, trainer={"devices": 1})
        assert not check(o, ctx), check(o, ctx)
        L.seed_everything(0, verbose=False)
        m = build(resolve(o, ctx), ctx)
        L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, **trainer_overrides(o)).fit(m)
        with torch.no_grad():
            x, tea = m.sample(x_T), m.teacher_points(x_T)[-1]
            half = (dict(solver="amed") if student == "amed" else
                    dict(solver=m.cfg.student, midpoints=lambda i, s, t, x: torch.sqrt(s * t), **m.cfg.student_options))
            fixed = diffode.sample(model.denoiser, x_T, nfe=None, grid=m.sigmas, afs=m.cfg.afs, **half)
        print(student, nfe, M, teacher, grid, "trained", round(endpoint_rmse(x, ref), 4),
              "fixed r=1/2", round(endpoint_rmse(fixed, ref), 4), "teacher", round(endpoint_rmse(tea, ref), 4), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gmm2d")
