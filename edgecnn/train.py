"""Fit and evaluate loops shared by every stage that trains: train, fine-tune, distill, QAT.

`fit(model, data, cfg, hooks)` runs epochs of minibatch training with the configured optimizer,
cosine schedule with warmup, label smoothing, early stopping on validation top-1, and mixed
precision on CUDA. Stages that train differently (distillation, QAT) pass `FitHooks` instead of
copying the loop.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from edgecnn.config import check
from edgecnn.data import DataBundle
from edgecnn.progress import progress, status


@dataclass
class TrainConfig:
    epochs: int = 8                     # passes over the train split
    batch_size: int = 64                # images per optimizer step
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3                    # peak learning rate, reached after warmup
    weight_decay: float = 1e-4          # decoupled (AdamW) or L2 (SGD); not applied to norms and biases
    momentum: float = 0.9               # SGD only
    warmup_epochs: float = 0.5          # linear warmup from lr/10, then cosine to 0
    label_smoothing: float = 0.0        # cross-entropy target smoothing, 0..0.5
    early_stopping: int = 0             # stop after this many epochs without val top-1 gain; 0: off
    freeze_backbone: bool = False       # train only the classifier (transfer learning)
    augment: bool = True                # use data.augment on train batches
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True                    # mixed precision when on CUDA
    max_steps: int | None = None        # stop after this many optimizer steps (smoke tests)

    def __post_init__(self):
        check(self.epochs >= 0, "epochs", f"{self.epochs} must be >= 0")
        check(self.batch_size >= 1, "batch_size", f"{self.batch_size} must be >= 1")
        check(self.lr > 0, "lr", f"{self.lr} must be > 0")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(0 <= self.label_smoothing < 0.5, "label_smoothing", f"{self.label_smoothing} is outside [0, 0.5)")
        check(self.early_stopping >= 0, "early_stopping", "must be >= 0")


@dataclass
class FitHooks:
    """How a stage customises the loop without copying it."""
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # loss(model, x, y, logits) -> scalar; default cross-entropy with label smoothing
    on_epoch_start: Callable[[nn.Module, int], None] | None = None
    train_mode: Callable[[nn.Module], None] | None = None    # default model.train()
    eval_mode: Callable[[nn.Module], None] | None = None     # default model.eval()
    parameters: Callable[[nn.Module], list[nn.Parameter]] | None = None
    after_backward: Callable[[nn.Module], None] | None = None  # e.g. sparsity regularisation gradients


@dataclass
class FitResult:
    epochs_run: int
    best_epoch: int
    best_val_top1: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "best_val_top1": self.best_val_top1, "seconds": round(self.seconds, 2),
                "history": self.history}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from edgecnn.errors import EdgecnnError
        raise EdgecnnError("train.device: 'cuda' was asked for but no CUDA GPU is visible to torch. "
                           "Use device: auto or cpu.")
    return torch.device(name)


def _param_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for n, p in params if p.ndim > 1]
    no_decay = [p for n, p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fit(model: nn.Module, data: DataBundle, cfg: TrainConfig, hooks: FitHooks | None = None,
        seed: int = 0, description: str = "train") -> FitResult:
    """Train `model` in place; on return it holds the weights of the best validation epoch."""
    hooks = hooks or FitHooks()
    device = resolve_device(cfg.device)
    model.to(device)
    torch.manual_seed(seed)
    train_mode = hooks.train_mode or (lambda m: m.train())
    eval_mode = hooks.eval_mode or (lambda m: m.eval())

    if cfg.freeze_backbone:
        from edgecnn.models import classifier_name
        head = classifier_name(model)
        for n, p in model.named_parameters():
            p.requires_grad = head is not None and n.startswith(head + ".")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if hooks.parameters is not None:
        keep = {id(p) for p in hooks.parameters(model)}
        named = [(n, p) for n, p in named if id(p) in keep]
    groups = _param_groups(named, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)

    steps_per_epoch = data.num_batches("train", cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (0.1 + 0.9 * step / max(1, warmup))
        t = (step - warmup) / max(1, total - warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    loss_fn = hooks.loss or (lambda m, x, y, logits: ce(logits, y))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    t0 = time.perf_counter()
    result = FitResult(0, -1, -1.0)
    best_state = None
    stale = 0
    step = 0
    for epoch in range(cfg.epochs):
        if hooks.on_epoch_start:
            hooks.on_epoch_start(model, epoch)
        train_mode(model)
        running, seen = 0.0, 0
        batches = data.batches("train", cfg.batch_size, shuffle=True,
                               augment=data_augment(data, cfg), seed=seed * 1000 + epoch)
        for x, y in progress(batches, steps_per_epoch, f"{description} {epoch + 1}/{cfg.epochs}"):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with torch.autocast(device.type, enabled=use_amp):
                logits = model(x)
                loss = loss_fn(model, x, y, logits)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if hooks.after_backward:
                hooks.after_backward(model)
            scaler.step(opt)
            scaler.update()
            running += loss.item() * len(y)
            seen += len(y)
            step += 1
            if step % 10 == 0:
                status(f"loss {running / seen:.3f}")
            if cfg.max_steps and step >= cfg.max_steps:
                break
        if hooks.train_mode is None and _slow_batch_norms(model):
            recalibrate_batch_norm(model, data, device=device, seed=seed + epoch)
        eval_mode(model)
        val = evaluate(model, data, "val", device=device)
        result.history.append({"epoch": epoch + 1, "train_loss": round(running / max(1, seen), 5),
                               "val_top1": val["top1"], "lr": lr_at(step)})
        result.epochs_run = epoch + 1
        if val["top1"] > result.best_val_top1:
            result.best_val_top1, result.best_epoch = val["top1"], epoch + 1
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
        if (cfg.early_stopping and stale >= cfg.early_stopping) or (cfg.max_steps and step >= cfg.max_steps):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    eval_mode(model)
    result.seconds = time.perf_counter() - t0
    return result


def _slow_batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Batch norms whose running statistics trail the weights: torchvision's MobileNetV3 uses
    momentum 0.01, so after a few hundred steps eval mode sees stale statistics
    (measured: mobilenet_v3_small on mnist5k, 91% top-1 in train mode, 10.8% in eval mode)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.momentum is not None and m.momentum < 0.05]


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, data: DataBundle, batches: int = 16, batch_size: int = 64,
                           device: torch.device | str = "cpu", seed: int = 0) -> None:
    """Re-estimate every batch norm's running mean and variance as a plain average over training
    batches (momentum None), then restore each layer's momentum. Weights do not change."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x, _ in data.batches("train", batch_size, shuffle=True, seed=seed, limit=batches * batch_size):
        model(x.to(device))
    for m, mom in zip(bns, momenta):
        m.momentum = mom


def data_augment(data: DataBundle, cfg: TrainConfig):
    return data.augment if cfg.augment else None


@torch.no_grad()
def predict(model: nn.Module, data: DataBundle, split: str = "test", batch_size: int = 256,
            device: torch.device | str | None = None, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for a split."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outs, labels = [], []
    for x, y in data.batches(split, batch_size, limit=limit):
        outs.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent, rounded to 2 decimals."""
    out = {}
    for k in ks:
        k_ = min(k, logits.shape[1])
        hit = (logits.topk(k_, dim=1).indices == labels[:, None]).any(dim=1)
        out[f"top{k}"] = round(100.0 * hit.float().mean().item(), 2)
    return out


def evaluate(model: nn.Module, data: DataBundle, split: str = "test", device=None,
             limit: int | None = None) -> dict[str, float]:
    """Top-1 / top-5 (percent) and mean cross-entropy on a split; the model must be in eval mode."""
    logits, labels = predict(model, data, split, device=device, limit=limit)
    acc = topk_accuracy(logits, labels)
    acc["loss"] = round(nn.functional.cross_entropy(logits, labels).item(), 5)
    acc["n"] = len(labels)
    return acc
