"""Data: sources, deterministic splits, the preprocessing contract and batch iteration.

`load_data(DataConfig, seed)` returns a `DataBundle` whose splits hold uint8 images at the model's
input size; batches are normalized (and augmented, for training) on the fly.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgecnn.config import check
from edgecnn.data.preprocess import Preprocess
from edgecnn.data.sources import DATA_SOURCES, RawData, parse_source
from edgecnn.errors import DataError

__all__ = ["AugmentConfig", "DataConfig", "DataBundle", "Split", "Preprocess", "load_data", "input_shape_of",
           "DATA_SOURCES"]


@dataclass
class AugmentConfig:
    shift: int = 2          # random translation in pixels at the input size (zero pad + random crop); 0: off
    flip: bool = False      # random horizontal flip; off by default because it changes digits' meaning


@dataclass
class DataConfig:
    source: str = "mnist5k"                 # mnist5k | digits | synthetic | imagefolder:PATH
    image_size: int | None = None           # model input side in pixels; null: the source's native size
    channels: int | None = None             # 1 or 3 model input channels; null: the source's
    mean: list[float] | None = None         # per-channel mean on [0, 1]; null: measured on the train split
    std: list[float] | None = None          # per-channel std on [0, 1]; null: measured on the train split
    val_fraction: float = 0.1               # share of images held out for validation (early stopping)
    test_fraction: float = 0.2              # share of images held out for the final test figures
    calibration_size: int = 256             # images drawn from the train split for int8 calibration
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    options: dict[str, Any] = field(default_factory=dict)   # source-specific (synthetic: num_classes, ...)

    def __post_init__(self):
        name, _ = parse_source(self.source)
        DATA_SOURCES.get(name, key="source")
        check(self.image_size is None or 4 <= self.image_size <= 1024, "image_size",
              f"{self.image_size} is outside 4..1024 pixels")
        check(self.channels in (None, 1, 3), "channels", f"{self.channels} is not 1 or 3")
        check(0 < self.val_fraction < 0.5, "val_fraction", f"{self.val_fraction} is outside (0, 0.5)")
        check(0 < self.test_fraction < 0.5, "test_fraction", f"{self.test_fraction} is outside (0, 0.5)")
        check(self.val_fraction + self.test_fraction < 0.8, "test_fraction",
              "val_fraction + test_fraction leaves too few training images (keep the sum under 0.8)")
        check(self.calibration_size >= 1, "calibration_size", "must be at least 1")
        for k in ("mean", "std"):
            v = getattr(self, k)
            check(v is None or len(v) in (1, 3), k, f"give 1 or 3 values, got {v}")
        check(self.std is None or all(s > 0 for s in self.std), "std", "every value must be > 0")


@dataclass
class Split:
    images: torch.Tensor      # uint8 (N, C_stored, H, W) at the model's input size
    labels: torch.Tensor      # int64 (N,)
    indices: np.ndarray       # positions in the source, for reports that name images

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataBundle:
    source: str
    splits: dict[str, Split]          # train, val, test, calibration
    class_names: list[str]
    preprocess: Preprocess
    fingerprint: str                  # sha256 of the split contents and preprocessing: a stage input
    augment: AugmentConfig = field(default_factory=AugmentConfig)   # what training batches get

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.preprocess.channels, *self.preprocess.size)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return self.normalize(self.splits["test"].images[:batch])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.preprocess.normalize(images.numpy()))

    def batches(self, split: str, batch_size: int = 256, *, shuffle: bool = False,
                augment: AugmentConfig | None = None, seed: int = 0, limit: int | None = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalized float32 NCHW batches and int64 labels. Augmentation only when given."""
        s = self.splits[split]
        n = len(s) if limit is None else min(limit, len(s))
        order = torch.randperm(len(s), generator=torch.Generator().manual_seed(seed))[:n] if shuffle \
            else torch.arange(n)
        g = torch.Generator().manual_seed(seed + 1)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            imgs = s.images[idx]
            if augment is not None:
                imgs = _augment(imgs, augment, g)
            yield self.normalize(imgs), s.labels[idx]

    def num_batches(self, split: str, batch_size: int, limit: int | None = None) -> int:
        n = len(self.splits[split]) if limit is None else min(limit, len(self.splits[split]))
        return (n + batch_size - 1) // batch_size

    def tensors(self, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.splits[split]
        n = len(s) if limit is None else min(limit, len(s))
        return self.normalize(s.images[:n]), s.labels[:n]


def _augment(imgs: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = imgs.shape
    if cfg.shift > 0:
        p = cfg.shift
        padded = torch.nn.functional.pad(imgs, (p, p, p, p))
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
        imgs = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if cfg.flip:
        flip = torch.rand(n, generator=g) < 0.5
        imgs = torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)
    return imgs


def _to_uint8_chw(raw: RawData, pre: Preprocess) -> np.ndarray:
    """Every image at the model's size and stored channels, through the same PIL path as files."""
    from PIL import Image

    stored_channels = 1 if (pre.channels == 1 or raw.native_channels == 1) else 3
    store = Preprocess(pre.size, stored_channels, pre.mean[:stored_channels], pre.std[:stored_channels],
                       pre.resize)
    if isinstance(raw.images, np.ndarray) and raw.native_size == pre.size:
        arr = raw.images
        if arr.ndim == 3:
            arr = arr[:, None]
        else:
            arr = arr.transpose(0, 3, 1, 2)
        if arr.shape[1] == stored_channels:
            return np.ascontiguousarray(arr)
    out = np.empty((len(raw.images), stored_channels, *pre.size), np.uint8)
    for i, img in enumerate(raw.images):
        if isinstance(img, np.ndarray):
            pil = Image.fromarray(img)
        else:
            try:
                pil = Image.open(img)
                pil.load()
            except OSError as e:
                raise DataError(f"{img}: not a readable image ({e}). Remove or replace the file.") from None
        out[i] = store.resize_uint8(pil)
    return out


def input_shape_of(cfg: DataConfig, seed: int = 0) -> tuple[int, int, int]:
    """The (C, H, W) that `load_data(cfg, seed).input_shape` gives, without loading the images when the
    source's own shape is known (a source function's `native_shape`) or the config fixes both.

    `edgecnn check` needs only this: reading mnist5k takes longer than some of the format checks.
    """
    name, _ = parse_source(cfg.source)
    native = getattr(DATA_SOURCES.get(name, key="data.source"), "native_shape", None)
    if native is None and not (cfg.image_size and cfg.channels):
        return tuple(load_data(cfg, seed).input_shape)
    channels = cfg.channels or native[0]
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else tuple(native[1:])
    return (channels, *size)


def load_data(cfg: DataConfig, seed: int = 0) -> DataBundle:
    name, arg = parse_source(cfg.source)
    raw = DATA_SOURCES.get(name, key="data.source")(arg, cfg.options)
    n = len(raw.labels)
    if raw.native_size is None and cfg.image_size is None:
        size = (224, 224)
    else:
        size = (cfg.image_size, cfg.image_size) if cfg.image_size else raw.native_size
    channels = cfg.channels or raw.native_channels

    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_test, n_val = max(1, int(round(n * cfg.test_fraction))), max(1, int(round(n * cfg.val_fraction)))
    if n - n_test - n_val < raw.labels.max() + 1:
        raise DataError(f"data.source: '{cfg.source}' has {n} images: too few to split into train, val "
                        f"and test (need at least one training image per class). Add images.")
    idx = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    train_idx = idx["train"]
    calib_rng = np.random.default_rng(seed + 7)
    idx["calibration"] = train_idx[calib_rng.permutation(len(train_idx))[:min(cfg.calibration_size,
                                                                                 len(train_idx))]]

    placeholder = Preprocess(size, channels, (0.0,) * channels, (1.0,) * channels)
    images = _to_uint8_chw(raw, placeholder)
    mean, std = cfg.mean, cfg.std
    if mean is None or std is None:
        if raw.default_mean and size == raw.native_size and channels == raw.native_channels:
            mean, std = mean or list(raw.default_mean), std or list(raw.default_std)
        else:
            train = images[train_idx].astype(np.float32) / 255.0
            m = train.mean(axis=(0, 2, 3)).tolist()
            s = train.std(axis=(0, 2, 3)).tolist()
            mean, std = mean or m, std or [max(v, 1e-3) for v in s]
    if channels == 3:  # one value given for a grayscale source shown to a 3-channel model
        mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"data.mean/std: give {channels} value(s) for {channels}-channel input "
                        f"(got mean {mean}, std {std}).")
    pre = Preprocess(size, channels, tuple(float(v) for v in mean), tuple(float(v) for v in std))

    labels = torch.from_numpy(raw.labels)
    timg = torch.from_numpy(images)
    splits = {k: Split(timg[v], labels[v], v) for k, v in idx.items()}
    h = hashlib.sha256()
    h.update(repr((cfg.source, seed, pre.to_dict(), raw.class_names,
                   {k: len(v) for k, v in idx.items()})).encode())
    for k in ("train", "val", "test", "calibration"):
        h.update(np.ascontiguousarray(idx[k]).tobytes())
    h.update(hashlib.sha256(images.tobytes()).digest())
    return DataBundle(cfg.source, splits, raw.class_names, pre, h.hexdigest(), cfg.augment)
