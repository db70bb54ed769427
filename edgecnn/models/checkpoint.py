"""Checkpoints: saved atomically, loaded with `weights_only=True` unless the user allows pickle.

An edgecnn checkpoint is a plain dict of tensors and primitives:
  {"edgecnn_checkpoint": 1, "state_dict": ..., "meta": {...}}
Pruned models change layer widths; `load_weights` resizes each layer to the saved shapes before
loading, so a checkpoint restores the architecture it was saved from.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecnn.errors import CheckpointError
from edgecnn.io import atomic_path

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    payload = {"edgecnn_checkpoint": FORMAT_VERSION,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "meta": meta or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint file as a dict with a 'state_dict'. Refuses pickled objects by default."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist. Check model.checkpoint in the recipe "
                              "(or the CHECKPOINT argument).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"checkpoint '{path}' holds pickled Python objects, which are refused because loading them "
            f"can run arbitrary code ({first[:160]}). If you trust the file, set "
            "'model.allow_pickle: true' in the recipe (or pass --allow-pickle); better, re-save it as "
            "a state_dict with torch.save(model.state_dict(), path).") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({str(e).splitlines()[0][:200]}). "
                              "Is it a file written by torch.save?") from None
    if isinstance(obj, nn.Module):  # only reachable with allow_pickle
        return {"state_dict": obj.state_dict(), "meta": {}}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj, "meta": {}}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return {"state_dict": obj["model"], "meta": {}}
    raise CheckpointError(f"checkpoint '{path}' holds no state_dict (found {type(obj).__name__}"
                          f"{' with keys ' + ', '.join(map(str, list(obj)[:8])) if isinstance(obj, dict) else ''}). "
                          "Save one with torch.save(model.state_dict(), path).")


def _resize_module(module: nn.Module, shapes: dict[str, torch.Size]) -> None:
    """Give a layer the parameter shapes of a (pruned) checkpoint, fixing its size attributes."""
    for pname, shape in shapes.items():
        old = getattr(module, pname)
        new = torch.empty(shape, dtype=old.dtype)
        if isinstance(old, nn.Parameter):
            setattr(module, pname, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module.register_buffer(pname, new)
    if isinstance(module, nn.Conv2d | nn.Conv1d | nn.ConvTranspose2d) and "weight" in shapes:
        w = module.weight.shape
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.out_channels = w[0]
        if depthwise:
            module.groups = module.in_channels = w[0]
        else:
            module.in_channels = w[1] * module.groups
    elif isinstance(module, nn.Linear) and "weight" in shapes:
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = (shapes.get("weight") or shapes.get("running_mean"))[0]
    elif isinstance(module, nn.LayerNorm) and "weight" in shapes:
        module.normalized_shape = tuple(module.weight.shape)


def load_weights(model: nn.Module, ckpt: dict[str, Any], source: str = "checkpoint") -> list[str]:
    """Load a checkpoint's weights into `model`.

    An edgecnn checkpoint restores its exact shapes (pruned widths). A plain state_dict from
    elsewhere loads every tensor whose shape matches; layers whose shapes differ (a classifier
    for another class count) keep their fresh init and are returned, so the caller can say so.
    """
    sd = ckpt["state_dict"]
    own = model.state_dict()
    if ckpt.get("edgecnn_checkpoint"):
        by_module: dict[str, dict[str, torch.Size]] = {}
        for k, v in sd.items():
            if k in own and own[k].shape != v.shape:
                mod, _, pname = k.rpartition(".")
                by_module.setdefault(mod, {})[pname] = v.shape
        for mod, shapes in by_module.items():
            _resize_module(model.get_submodule(mod), shapes)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{source}: the checkpoint does not match the model "
                                  f"(missing: {', '.join(missing[:5]) or 'none'}; unexpected: "
                                  f"{', '.join(unexpected[:5]) or 'none'}). Is model.source the architecture "
                                  "it was saved from?")
        return []
    skipped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in sd.items() if k in own and k not in skipped}
    if not usable:
        raise CheckpointError(f"{source}: no tensor in the checkpoint matches the model's layer names "
                              f"(checkpoint has e.g. {', '.join(list(sd)[:3])}; the model has e.g. "
                              f"{', '.join(list(own)[:3])}). Is model.source the right architecture?")
    model.load_state_dict(usable, strict=False)
    return skipped
