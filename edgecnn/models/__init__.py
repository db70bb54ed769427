"""Model sources and safe checkpoint I/O.

A model source string is one of:
  `bn_cnn`, `simple_cnn` (built in, also as `builtin:NAME`), `torchvision:NAME`, `timm:NAME`,
  or `package.module:factory` for the user's own code.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from edgecnn.errors import EdgecnnError, RecipeError, did_you_mean, unknown
from edgecnn.models.builtin import BUILTIN
from edgecnn.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from edgecnn.registry import Registry

__all__ = ["ModelConfig", "build_model", "MODEL_SOURCES", "save_checkpoint", "load_checkpoint",
           "load_weights", "count_macs", "count_params", "classifier_name"]


@dataclass
class ModelConfig:
    source: str = "bn_cnn"               # bn_cnn | simple_cnn | torchvision:NAME | timm:NAME | pkg.module:factory
    checkpoint: str | None = None        # weights to start from (fine-tuning); loaded with weights_only=True
    allow_pickle: bool = False           # let `checkpoint` unpickle arbitrary objects: only for files you trust
    options: dict[str, Any] = field(default_factory=dict)   # extra keyword arguments for the factory

    def __post_init__(self):
        kind, name = parse_model_source(self.source, key="source")
        if kind == "torchvision":  # cheap to check now, rather than after the data has loaded
            import torchvision

            names = torchvision.models.list_models(module=torchvision.models)
            if name not in names:
                raise unknown("torchvision classification model", name, names, "source")


ModelFactory = Callable[[str, int, int, dict[str, Any]], nn.Module]
MODEL_SOURCES: Registry[ModelFactory] = Registry("model source")


def parse_model_source(spec: str, key: str = "model.source") -> tuple[str, str]:
    """'torchvision:resnet18' -> ('torchvision', 'resnet18'); 'bn_cnn' -> ('builtin', 'bn_cnn')."""
    prefix, sep, rest = spec.partition(":")
    if not sep:
        if spec in BUILTIN:
            return "builtin", spec
        raise unknown("model", spec, [*BUILTIN, "torchvision:NAME", "timm:NAME", "package.module:factory"], key)
    if prefix in MODEL_SOURCES:
        return prefix, rest
    if "." in prefix or prefix.isidentifier():
        return "factory", spec
    raise RecipeError(key, f"'{spec}' is not a model source.{did_you_mean(prefix, MODEL_SOURCES)} "
                           f"Use one of {', '.join(BUILTIN)}, torchvision:NAME, timm:NAME or package.module:factory.")


@MODEL_SOURCES.register("builtin")
def _builtin(name: str, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    if name not in BUILTIN:
        raise unknown("built-in model", name, BUILTIN, "model.source")
    return BUILTIN[name](num_classes=num_classes, in_channels=in_channels, **options)


@MODEL_SOURCES.register("torchvision")
def _torchvision(name: str, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise unknown("torchvision classification model", name, names, "model.source")
    # Weights are never downloaded: architectures start from random init or a local checkpoint.
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    return adapt_input_channels(model, in_channels)


@MODEL_SOURCES.register("timm")
def _timm(name: str, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise EdgecnnError("model.source: timm models need the timm package: pip install timm") from None
    if name not in timm.list_models():
        raise unknown("timm model", name, timm.list_models(), "model.source")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)


@MODEL_SOURCES.register("factory")
def _factory(spec: str, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EdgecnnError(f"model.source: cannot import '{module_name}' for '{spec}' ({e}). "
                           "Install the package or add its folder to PYTHONPATH.") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        found = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise EdgecnnError(f"model.source: '{module_name}' has no callable '{attr}'."
                           f"{did_you_mean(attr, found)}")
    params = inspect.signature(fn).parameters
    kwargs = dict(options)
    for k, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        if k in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs.setdefault(k, v)
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise EdgecnnError(f"model.source: '{spec}' returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def adapt_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first convolution so the model takes `in_channels` (e.g. 1 for grayscale)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels == in_channels:
                return model
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            1, m.bias is not None, m.padding_mode)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)
            return model
    return model


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    """Build the architecture, then load `cfg.checkpoint` (weights only unless allowed) if given."""
    kind, name = parse_model_source(cfg.source)
    model = MODEL_SOURCES.get(kind)(name, num_classes, in_channels, dict(cfg.options))
    if cfg.checkpoint:
        ckpt = load_checkpoint(cfg.checkpoint, allow_pickle=cfg.allow_pickle)
        load_weights(model, ckpt, source=cfg.checkpoint)
    return model


def classifier_name(model: nn.Module) -> str | None:
    """The last Linear layer: the classifier, left alone by pruning and often by quantization."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def observing(model: nn.Module, hooks: Iterable[Any] = ()) -> Iterator[None]:
    """Eval mode and no grad for forward passes that only look at `model`; on the way out, even
    after an error, the hook handles in `hooks` are removed and the model's train/eval mode is
    restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch.utils.flop_counter FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with observing(model), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    return counter.get_total_flops() // 2
