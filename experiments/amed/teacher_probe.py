"""Probe: how the AMED teacher (M, solver) and the grid change the trained AMED-Solver / plugins on a mixture.

    python experiments/amed/teacher_probe.py gmm2d     # 500 held-out samples, RMSE vs a dopri5 solve
"""
import sys, torch
sys.path.insert(0, "experiments/amed")
import gmm as G
from diffode.models import initial_noise, load_model
from diffode.core.sample import sample
import lightning as L
from pathlib import Path
from diffode.methods.amed import build, check, resolve, trainer_overrides
from diffode.methods.registry import Context, method_options
torch.set_num_threads(1)
model = load_model({"kind": "gmm", "preset": sys.argv[1]})
x_T = initial_noise(model.shape, range(500), model.sigma_max)
ref = G.reference(model.denoiser, x_T, model.sigma_max, model.sigma_min)
for student, nfe, M, teacher, grid in [("amed",5,1,None,"edm"),("amed",5,3,None,"edm"),("amed",5,7,None,"edm"),("amed",5,3,"dpm_solver_3","edm"),("amed",5,3,None,"logsnr"),("ipndm",5,2,None,"edm"),("ipndm",5,5,None,"edm"),("dpm_solver_2",5,2,None,"edm"),("dpm_solver_2",5,5,None,"edm"),("dpm_solver_2",5,5,None,"logsnr")]:
    o = method_options("amed", student=student, nfe=nfe, afs=bool(nfe % 2), M=M, teacher_solver=teacher, grid=grid)
    ctx = Context(out_dir=Path("."), teacher=model, trainer={"devices": 1})
    assert not check(o, ctx), check(o, ctx)
    m = build(resolve(o, ctx), ctx)
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **trainer_overrides(o)).fit(m)
    with torch.no_grad():
        x = m.sample(x_T); tea = m.teacher_points(x_T)[-1]
        fixed = sample(model.denoiser, x_T, "amed", nfe=nfe, grid=m.sigmas, afs=m.cfg.afs) if student=="amed" else sample(model.denoiser, x_T, m.cfg.student, nfe=None, grid=m.sigmas, afs=m.cfg.afs, midpoints=lambda i,s,t,x: torch.sqrt(s*t), **m.cfg.student_options)
    r = lambda a: float((a-ref).pow(2).mean().sqrt())
    print(student, nfe, M, teacher, grid, "trained", round(r(x),4), "fixed r=1/2", round(r(fixed),4), "teacher", round(r(tea),4), flush=True)
