"""Knowledge distillation (and the plain fine-tune it is compared against).

`distill(student, teacher, data, config)` trains a copy of the student on
    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)
(Hinton et al., 2015: the T^2 keeps the soft-target gradients the same size as T changes), plus an
optional hint loss (FitNets, Romero et al., 2015): MSE between chosen student and teacher feature
maps, through a learnable 1x1 conv adapter when their widths differ. The teacher is one model or a
list (an ensemble whose logits are averaged). Training runs through `edgecnn.train.fit` with a
custom loss hook, so schedule, early stopping and AMP are the same as in every other stage.

`finetune(model, data, train)` is the plain cross-entropy baseline with the same loop, so a report
can put KD and plain fine-tuning side by side at equal epochs.

Defaults T = 1, alpha = 0.5 (torchdistill's ImageNet KD recipe uses the same). Measured on the
fine-tune after pruning (bn_cnn on mnist5k, same pruned model, same epochs and schedule, test split,
several seeds; docs/distillation.md): with a one-epoch budget T = 4 / alpha = 0.9 lost 0.8 points to
plain cross-entropy on average, T = 1 / alpha = 0.5 tied it; with three epochs all were within 0.1.
A 10-class teacher that is 98% sure gives soft targets close to uniform at T = 4 (mean top
probability 0.42-0.50), so 90% of the loss asked a student that pruning had left at chance to
reproduce that flat distribution and only 10% to learn the classes.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgecnn.config import check, to_dict
from edgecnn.data import DataBundle
from edgecnn.errors import EdgecnnError, did_you_mean
from edgecnn.train import FitHooks, FitResult, TrainConfig, evaluate, fit

__all__ = ["DistillConfig", "DistillResult", "distill", "distill_", "finetune", "finetune_", "distill_stage"]

# Attribute under which hint adapters ride on the student while it trains (so `fit` optimises
# them with the student's parameters); removed before the student is returned.
_ADAPTERS = "_edgecnn_hint_adapters"


@dataclass
class DistillConfig:
    temperature: float = 1.0            # softmax temperature T for teacher and student logits (see the module doc)
    alpha: float = 0.5                  # weight of the soft (KL) term; 1 - alpha goes to hard-label CE
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, lr=1e-3))  # optimiser, epochs
    features: dict[str, str] = field(default_factory=dict)   # hint pairs: student layer -> teacher layer
    feature_weight: float = 1.0         # weight of the summed hint MSE losses
    eval_split: str = "val"             # split for the before/after accuracy figures

    def __post_init__(self):
        check(self.temperature > 0, "temperature", f"{self.temperature} must be > 0 (1 to 4 is usual)")
        check(0.0 <= self.alpha <= 1.0, "alpha", f"{self.alpha} is outside [0, 1]")
        check(self.feature_weight >= 0, "feature_weight", f"{self.feature_weight} must be >= 0")
        check(self.eval_split in ("train", "val", "test", "calibration"), "eval_split",
              f"'{self.eval_split}' is not a split: use val or test")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass
class DistillResult:
    """A fine-tuned copy of the student and how it got there (`method`: 'distill' or 'plain')."""
    model: nn.Module
    method: str
    accuracy_before: dict[str, float]
    accuracy_after: dict[str, float]
    teacher_accuracy: dict[str, float] | None
    fit: FitResult
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "accuracy_before": self.accuracy_before,
                "accuracy_after": self.accuracy_after, "teacher_accuracy": self.teacher_accuracy,
                "fit": self.fit.to_dict(), "config": self.config, "notes": self.notes}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1),
                    F.log_softmax(teacher_logits.float() / t, dim=1), reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    return alpha * t * t * soft + (1.0 - alpha) * hard


def _as_teachers(teacher: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
    if not teachers or not all(isinstance(t, nn.Module) for t in teachers):
        raise EdgecnnError("distill: the teacher must be an nn.Module or a non-empty list of them "
                           f"(got {type(teacher).__name__}).")
    return teachers


def _module(model: nn.Module, name: str, role: str) -> nn.Module:
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        raise EdgecnnError(f"distill.features: the {role} has no layer '{name}'.{did_you_mean(name, names)} "
                           f"Layers include: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}.")
    return model.get_submodule(name)


class _Hints:
    """Forward hooks that keep the latest output of each hinted layer, and the adapters between them."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: dict[str, str], example: torch.Tensor):
        self.pairs = dict(pairs)
        self.student_out: dict[str, torch.Tensor] = {}
        self.teacher_out: dict[str, torch.Tensor] = {}
        self.handles = []
        for s, t in self.pairs.items():
            self.handles.append(_module(student, s, "student").register_forward_hook(self._keep(self.student_out, s)))
            self.handles.append(_module(teacher, t, "teacher").register_forward_hook(self._keep(self.teacher_out, t)))
        # One probe pass learns the widths, to build 1x1 adapters where they differ.
        with torch.no_grad():
            was = student.training
            student.eval()
            student(example)
            student.train(was)
            teacher(example)
        adapters = nn.ModuleDict()
        for s, t in self.pairs.items():
            cs, ct = self.student_out[s].shape[1], self.teacher_out[t].shape[1]
            if self.student_out[s].dim() != self.teacher_out[t].dim():
                raise EdgecnnError(f"distill.features: student '{s}' gives {tuple(self.student_out[s].shape)} "
                                   f"but teacher '{t}' gives {tuple(self.teacher_out[t].shape)}; pair layers "
                                   "with outputs of the same rank (both feature maps).")
            # nn.Identity when widths match: the hint then pulls the student's own features.
            adapters[_key(s)] = nn.Conv2d(cs, ct, 1, bias=False) if (cs != ct and self.student_out[s].dim() == 4) \
                else (nn.Linear(cs, ct, bias=False) if cs != ct else nn.Identity())
        setattr(student, _ADAPTERS, adapters.to(example.device))

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], name: str):
        def hook(_m, _inp, out):
            store[name] = out
        return hook

    def loss(self, student: nn.Module) -> torch.Tensor:
        adapters = getattr(student, _ADAPTERS)
        total = 0.0
        for s, t in self.pairs.items():
            fs, ft = adapters[_key(s)](self.student_out[s]), self.teacher_out[t].detach()
            if fs.dim() == 4 and fs.shape[-2:] != ft.shape[-2:]:
                # Different strides: compare at the coarser resolution.
                size = min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1])
                fs, ft = F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)
            total = total + F.mse_loss(fs.float(), ft.float())
        return total

    def remove(self, student: nn.Module) -> None:
        for h in self.handles:
            h.remove()
        if hasattr(student, _ADAPTERS):
            delattr(student, _ADAPTERS)


def _key(layer: str) -> str:
    return layer.replace(".", "__")   # ModuleDict keys cannot hold dots


def distill_(student: nn.Module, teacher: nn.Module | Sequence[nn.Module], data: DataBundle,
             config: DistillConfig | None = None, seed: int = 0, description: str = "distill") -> DistillResult:
    """Distill into `student` in place (see `distill` for the copying version)."""
    cfg = config or DistillConfig()
    teachers = _as_teachers(teacher)
    notes = []
    for t in teachers:
        t.eval()
        for p in t.parameters():
            p.requires_grad_(False)
    device = next(student.parameters()).device
    for t in teachers:
        t.to(device)
    before = evaluate(student.eval(), data, cfg.eval_split)
    teacher_acc = evaluate(_Ensemble(teachers).eval(), data, cfg.eval_split) if teachers else None

    hints = None
    if cfg.features and cfg.feature_weight > 0:
        if len(teachers) > 1:
            notes.append("feature hints use the first teacher of the ensemble; logits use all of them")
        hints = _Hints(student, teachers[0], cfg.features, data.example_input(2).to(device))

    ls = cfg.train.label_smoothing

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = torch.stack([t(x).float() for t in teachers]).mean(0)
        out = kd_loss(logits, t_logits, y, cfg.temperature, cfg.alpha, ls)
        if hints is not None:
            out = out + cfg.feature_weight * hints.loss(model)
        return out

    def on_epoch_start(model: nn.Module, epoch: int) -> None:
        for t in teachers:   # fit moves the student to its device; the teachers follow
            t.to(next(model.parameters()).device)

    try:
        result = fit(student, data, cfg.train, FitHooks(loss=loss, on_epoch_start=on_epoch_start),
                     seed=seed, description=description)
    finally:
        if hints is not None:
            hints.remove(student)
    after = evaluate(student.eval(), data, cfg.eval_split)
    return DistillResult(student, "distill", before, after, teacher_acc, result, cfg.to_dict(), notes)


def distill(student: nn.Module, teacher: nn.Module | Sequence[nn.Module], data: DataBundle,
            config: DistillConfig | None = None, seed: int = 0) -> DistillResult:
    """Train a copy of `student` to match `teacher` (a model, or a list averaged as an ensemble).

    The student and the teachers passed in are not changed; `result.model` is the trained copy.
    """
    teachers = [copy.deepcopy(t) for t in _as_teachers(teacher)]
    return distill_(copy.deepcopy(student), teachers, data, config, seed)


def finetune_(model: nn.Module, data: DataBundle, train: TrainConfig | None = None, seed: int = 0,
              eval_split: str = "val", description: str = "finetune") -> DistillResult:
    """Plain cross-entropy fine-tune of `model` in place: the baseline KD is compared with."""
    train = train or DistillConfig().train
    before = evaluate(model.eval(), data, eval_split)
    result = fit(model, data, train, seed=seed, description=description)
    after = evaluate(model.eval(), data, eval_split)
    return DistillResult(model, "plain", before, after, None, result, {"train": to_dict(train)})


def finetune(model: nn.Module, data: DataBundle, train: TrainConfig | None = None, seed: int = 0,
             eval_split: str = "val") -> DistillResult:
    """Plain cross-entropy fine-tune of a copy of `model` (same loop and settings as `distill`)."""
    return finetune_(copy.deepcopy(model), data, train, seed, eval_split)


class _Ensemble(nn.Module):
    """Averaged logits of several models, for the teacher's accuracy figure."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x):
        return torch.stack([m(x).float() for m in self.models]).mean(0)


def distill_stage(ctx, cfg: DistillConfig):
    """Pipeline stage: distill the reference (trained, uncompressed) model into the current one."""
    from edgecnn.pipeline import StageResult

    result = distill_(copy.deepcopy(ctx.model), copy.deepcopy(ctx.reference()), ctx.data, cfg, seed=ctx.seed)
    metrics = {"top1_before": result.accuracy_before["top1"], "top1_after": result.accuracy_after["top1"],
               "teacher_top1": result.teacher_accuracy["top1"] if result.teacher_accuracy else None,
               "epochs_run": result.fit.epochs_run, "eval_split": cfg.eval_split}
    return StageResult(model=result.model, metrics=metrics, files={})
