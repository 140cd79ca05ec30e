"""The jobs the fault harness interrupts: one small config per job kind, and what each one produces.

A job is a `diffode` command line (its arguments after `diffode`), run in a sandbox folder: the run dir
`<sandbox>/run`, Hydra's own dir `<sandbox>/hydra`, the cache `<sandbox>/cache` ($DIFFODE_CACHE) and the
temp folder `<sandbox>/tmp` ($TMPDIR). Its results are the files it exists to write (weights, artifacts,
results.csv); `diffode.faults.compare` reads them. Every config here is seconds of compute on one core, but
walks the same code as a full run: start-up, fit with epoch-end checkpoints, results, export, caches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COMMON = ["threads=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
GMM_DATA = ["dataset=gmm2d", "dataset.n_train=64", "dataset.batch_size=16"]  # 4 steps per epoch


@dataclass(frozen=True)
class Job:
    kind: str
    args: tuple  # after `diffode`; {teacher} stands for the denoiser job's export
    results: tuple  # glob patterns under the run dir: the files the job exists to write
    needs_teacher: bool = False

    def argv(self, sandbox: Path, teacher: Path | None = None) -> list[str]:
        out = [a.replace("{teacher}", str(teacher)) for a in self.args]
        return [*out, f"output_dir={sandbox / 'run'}", f"hydra.run.dir={sandbox / 'hydra'}"]


JOBS = {j.kind: j for j in [
    Job("denoiser", ("train", "method=denoiser", *GMM_DATA, "net=mlp", "net.hidden=32", "net.depth=2",
                     "schedule=vp_linear", "method.lr=1e-2", "method.n_samples=0", "trainer.max_steps=12",
                     "sample_every_n_steps=4", "trainer.limit_val_batches=1", *COMMON),
        ("denoiser_ema.ckpt", "checkpoints/last.ckpt", "results.json", "weights_rank0.json")),
    Job("eval", ("eval", "source=checkpoint", "sweep.solvers=[euler,dpmpp_2m]", "sweep.grids=[logsnr]",
                 "sweep.nfes=[3,4]", "n_samples=16", "batch_size=16", "fid.bootstrap=8", "reference.nfe=12",
                 "reference.check_nfe=6", "save_images=16", "progress=false", "threads=1"),
        ("results.csv", "samples/*.png", "summary.json")),
    Job("ld3", ("train", "method=ld3", "source=gmm16d", "method.distance=l2", "method.solver=ipndm", "method.nfe=4",
                "method.n_pairs=8", "method.rounds_logits=1", "method.rounds_joint=1", "method.batch_size=2",
                "method.val_every=2", "method.teacher.nfe=10", "method.init_grid=edm", *COMMON),
        ("artifacts/ld3/*", "results.json")),
    Job("amed", ("train", "method=amed", "source=gmm2d", "method.nfe=5", "method.n_trajectories=16", "method.batch=8",
                 "method.n_val=8", "method.val_every=1", *COMMON),
        ("artifacts/*/*", "results.json")),
    Job("gits", ("train", "method=gits", "source=gmm2d", "method.n_warmup=12", "method.batch_size=5",
                 "method.teacher.steps=10", "method.nfe=[3,4]", "method.solver=[ipndm,unipc_bh1]", *COMMON),
        ("artifacts/*/*/*", "artifacts/*/*", "results.json")),
    Job("progressive_distillation", ("train", "method=progressive_distillation", "source.path={teacher}",
                                     *GMM_DATA, "method.n0=4", "method.n_final=1", "method.updates_per_stage=3",
                                     "method.eval_samples=16", *COMMON),
        ("artifacts/*/*", "students/*", "checkpoints/last.ckpt", "results.json"), needs_teacher=True),
    Job("consistency_distillation", ("train", "method=consistency_distillation", "source.path={teacher}",
                                     *GMM_DATA, "trainer.max_steps=12", "sample_every_n_steps=4",
                                     "trainer.limit_val_batches=1", "method.sample_steps=[1,2]", "method.n_val=8",
                                     "method.reference_nfe=10", *COMMON),
        ("artifacts/*/*", "checkpoints/last.ckpt", "results.json"), needs_teacher=True),
]}


def teacher_of(sandbox: Path) -> Path:
    """The denoiser job's export, the teacher of the distillations."""
    return sandbox / "run" / "denoiser_ema.ckpt"
