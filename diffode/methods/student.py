"""Students of a teacher denoiser: what progressive and consistency distillation share.

A student is a `ModelDenoiser` (D(x, sigma) in VE coordinates) whose network starts as a copy of the
teacher's (EMA) weights. Use it as:

    teacher = load_model(source_cfg)                          # diffode.models.Model, kind checkpoint
    hp = teacher_hparams(teacher)                             # net / schedule / data specs, plain data
    output = choose_output(hp["prediction"], "auto")          # eps teachers -> v (see below)
    student = make_student(teacher.denoiser, output)          # trainable copy
    ...train...
    save_student_checkpoint(student, hp, "students/4.ckpt")   # loadable by diffode.models.load_denoiser
    save_student_artifact(out_dir, student, hp, kind="pd", solver="ddim", nfe=4, sigmas=grid,
                          model=teacher)                      # diffode.artifacts format, `student` piece

Output switch: an eps-predicting network gives D = (x_t - sigma_t eps) / alpha_t, which multiplies the
network's error by sigma_t / alpha_t = sigma_ve (80 at the EDM sigma_max), so a student that must land
in one step from pure noise cannot be eps-parameterised (Salimans & Ho, sec. 4). `choose_output` keeps
any other parameterisation and turns eps into `v` (or the x0 / v / edm output asked for). The network
keeps its weights and inputs (x0 and v read the same x_t and noise conditioning as eps; edm feeds it
c_in x and log(sigma)/4 instead); only the meaning of its output changes, which the first stage of
training re-learns.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from ..core.denoisers import PREDICTIONS, ModelDenoiser

log = logging.getLogger(__name__)

ONE_STEP_OUTPUTS = ("x0", "v", "edm")  # parameterisations that can take a step from sigma_max
DENOISER_TARGET = "diffode.core.denoisers.ModelDenoiser"


def teacher_hparams(model) -> dict:
    """The plain hyper-parameters (net, schedule, data, prediction, sigma_data) of a teacher Model loaded
    from a diffode checkpoint; ValueError for a teacher without a network (an exact GMM) or a foreign one."""
    hp = (getattr(model, "info", None) or {}).get("hparams")
    if not hp or not isinstance(getattr(model, "denoiser", None), ModelDenoiser):
        kind = (getattr(model, "identity", None) or {}).get("kind")
        raise ValueError(f"distillation needs a teacher network from a diffode checkpoint (source=checkpoint "
                         f"source.path=<run dir>/denoiser_ema.ckpt), got a source of kind {kind!r}; the exact GMM "
                         "denoiser has no network to copy (train an MLP first: `diffode train experiment=gmm2d`).")
    return {k: copy.deepcopy(hp[k]) for k in ("net", "schedule", "data", "prediction")} | {
        "sigma_data": hp.get("sigma_data", 0.5)}


def choose_output(teacher_prediction: str, requested: str = "auto") -> str:
    """The student's parameterisation: `requested`, or with 'auto' the teacher's own unless it is eps
    (then v). Raises ValueError for a name that is not a parameterisation."""
    if requested == "auto":
        return "v" if teacher_prediction == "eps" else teacher_prediction
    if requested not in PREDICTIONS:
        raise ValueError(f"unknown student output {requested!r}; choose auto or one of {', '.join(PREDICTIONS)}.")
    return requested


def make_student(teacher: ModelDenoiser, output: str | None = None) -> ModelDenoiser:
    """A trainable ModelDenoiser whose network is a copy of the teacher's, with prediction `output`."""
    output = output or teacher.prediction
    if output != teacher.prediction:
        log.info("student output switched from the teacher's %s to %s", teacher.prediction, output)
    student = ModelDenoiser(copy.deepcopy(teacher.net), teacher.schedule, output, teacher.sigma_data)
    return student.train().requires_grad_(True)


def student_hparams(hp: dict, student: ModelDenoiser, **extra) -> dict:
    """The teacher's hyper-parameters with the student's prediction (and any extra plain records)."""
    return {**copy.deepcopy(hp), "prediction": student.prediction, "sigma_data": student.sigma_data, **extra}


def student_spec(hp: dict, student: ModelDenoiser) -> dict:
    """The `_target_` spec that rebuilds the student (diffode.spec.build); its weights are student.state_dict()."""
    return {"_target_": DENOISER_TARGET, "net": copy.deepcopy(hp["net"]), "schedule": copy.deepcopy(hp["schedule"]),
            "prediction": student.prediction, "sigma_data": student.sigma_data}


def save_student_checkpoint(student: ModelDenoiser, hp: dict, path, global_step: int | None = None,
                            **extra) -> Path:
    """A denoiser checkpoint (load_denoiser's format) holding the student's weights.

    The weights are the student's own (the distillations train without EMA), so `ema` is False and
    load them with load_denoiser(path, ema=False) (ema=True loads them too, with a warning)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {f"denoiser.{k}": v.detach().cpu().clone() for k, v in student.state_dict().items()}
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"hyper_parameters": student_hparams(hp, student, **extra), "state_dict": state, "ema": False,
                "global_step": global_step}, tmp)
    tmp.replace(out)  # atomic: a killed job never leaves half a student
    return out


def save_student_artifact(out_dir, student: nn.Module, hp: dict, *, kind: str, solver: str, nfe: int, sigmas,
                          model, training: dict | None = None, metrics: dict | None = None, label: str | None = None,
                          **kw) -> Path:
    """An artifact (diffode.artifacts) whose `student` piece replaces the model's denoiser when sampling.

    model: the teacher Model (its identity and schedule are recorded, so the artifact refuses other models)."""
    from ..artifacts import save_artifact

    return save_artifact(out_dir, kind=kind, solver=solver, nfe=nfe, sigmas=sigmas, model=model.identity,
                         schedule=model.schedule, training=training, metrics=metrics, label=label,
                         condition=model.condition,
                         student=student, student_spec=student_spec(hp, student), **kw)
