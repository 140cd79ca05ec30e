"""N0 for the gmm2d eps-MLP teacher: DDIM at N steps against its own rk45 solve (rtol 1e-7) and against the exact ODE of the mixture (2000 noises). Output: results/gmm2d_n0.txt (columns grid, N, RMSE vs own solve, RMSE vs exact)."""
import torch
torch.set_num_threads(1)
from diffode.models import export_denoiser, load_model, initial_noise
import diffode
from diffode.core.denoisers import GMM_PRESETS, make_gmm
from diffode.metrics.gmm import reference_solve, endpoint_rmse
p = export_denoiser("/tmp/gmm2d_teacher/checkpoints/last.ckpt", "/tmp/gmm2d_teacher/denoiser_ema.ckpt", ema=True)
m = load_model({"kind": "checkpoint", "path": str(p), "ema": True})
print(m.schedule, m.sigma_min, m.sigma_max)
x_T = initial_noise(m.shape, range(2000), m.sigma_max)
with torch.no_grad():
    ref = diffode.sample(m.denoiser, x_T, solver="rk45", nfe=None, rtol=1e-7, atol=1e-7, schedule=m.schedule)
    ex = reference_solve(make_gmm(**GMM_PRESETS["gmm2d"]), x_T, m.sigma_max, m.sigma_min)
    print("teacher rk45 vs exact", endpoint_rmse(ref, ex))
    for g in ("logsnr", "edm", "time_uniform"):
        for N in (8, 16, 32, 64, 128, 256):
            x = diffode.sample(m.denoiser, x_T, solver="ddim", nfe=N, grid=g, schedule=m.schedule)
            print(g, N, round(endpoint_rmse(x, ref), 4), round(endpoint_rmse(x, ex), 4), flush=True)
