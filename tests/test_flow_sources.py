"""diffusers flow models as sources: a tiny SD3Transformer2DModel (built here, saved with save_pretrained beside a
FlowMatchEulerDiscreteScheduler) loads through source=diffusers with the flow schedule and the velocity
parameterization, and samples with every deterministic solver. Pixel space on 4 x 8 x 8 tensors: diffode has no
VAE path yet, so a latent model's samples are its latents."""
from __future__ import annotations

import pytest
import torch

from diffode.core.sample import reachable_nfes, sample
from diffode.core.schedules import Flow
from diffode.core.solvers import SOLVERS, get_solver
from diffode.models import load_model

F64 = torch.float64
import diffusers  # noqa: E402  (a required dev dependency: a missing peer fails here instead of skipping)


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    torch.manual_seed(0)
    net = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                          num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                          pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8)
    path = tmp_path_factory.mktemp("sd3")
    net.save_pretrained(path / "transformer")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(path / "scheduler")
    return path, net.eval()


def test_the_transformer_loads_as_a_flow_model(sd3_folder):
    path, net = sd3_folder
    m = load_model({"kind": "diffusers", "path": str(path), "dataset": "none"})
    assert isinstance(m.schedule, Flow) and m.denoiser.prediction == "velocity" and m.shape == (4, 8, 8)
    assert m.schedule.t_min == pytest.approx(1e-3) and m.schedule.t_max == pytest.approx(0.999)
    assert m.info["grid_shift"] == {"shift": 3.0} and m.identity["kind"] == "diffusers"
    # D = x_t - t u with u the transformer's output at timestep 1000 t and x_t = x_ve / (1 + s)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 8, 8, dtype=F64, generator=g) * 4
    for s in (0.01, 1.0, 50.0):
        t = s / (1 + s)
        x_t = x / (1 + s)
        with torch.no_grad():
            u = net(x_t.float(), encoder_hidden_states=torch.zeros(3, 1, 16), pooled_projections=torch.zeros(3, 8),
                    timestep=torch.full((3,), 1000 * t)).sample.double()
            got = m.denoiser(x, s)
        torch.testing.assert_close(got, x_t - t * u, rtol=1e-5, atol=1e-5)


def test_it_samples_with_every_deterministic_solver(sd3_folder):
    path, _ = sd3_folder
    m = load_model({"kind": "diffusers", "path": str(path), "dataset": "none"})
    get_solver("heun")
    x_T = m.sigma_max * torch.randn(2, 4, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    names = sorted(n for n, s in SOLVERS.items() if not (s.stochastic or s.adaptive or n in ("consistency", "amed")))
    assert len(names) >= 12
    for name in names:
        nfe = next(n for n in range(4, 12) if n in reachable_nfes(name, 12))
        with torch.no_grad():
            x = m.sample(x_T, 2, solver=name, nfe=nfe, grid="time_uniform", grid_options={"shift": 3.0})
        assert x.shape == x_T.shape and bool(torch.isfinite(x).all()), name


def test_euler_on_the_models_grid_is_diffusers_flow_match_euler(sd3_folder):
    """The same transformer under diffusers' own FlowMatchEuler loop (from its second point: the first is t = 1)
    and under diffode's euler on those points: the same samples up to the transformer's float32."""
    path, net = sd3_folder
    m = load_model({"kind": "diffusers", "path": str(path), "dataset": "none"})
    sch = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
    sch.set_timesteps(8)
    sig = sch.sigmas.to(F64)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = dict(encoder_hidden_states=torch.zeros(2, 1, 16), pooled_projections=torch.zeros(2, 8))
    with torch.no_grad():
        for i, ts in enumerate(sch.timesteps):
            x = sch.step(net(x, timestep=ts.expand(2), **cond).sample, ts, x).prev_sample
            if i == 0:
                x1 = x.to(F64)
        ref = x.to(F64)
        grid = sig[1:-1] / (1 - sig[1:-1])
        ours = sample(m.denoiser, x1 / (1 - sig[1]), "euler", nfe=None, grid=grid, schedule=Flow(t_min=1e-4, t_max=0.9999),
                      denoise_to_zero=True)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_a_folder_without_a_scheduler_is_refused(sd3_folder, tmp_path):
    path, net = sd3_folder
    net.save_pretrained(tmp_path / "transformer")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_model({"kind": "diffusers", "path": str(tmp_path)})
