"""The preprocessing contract: how a raw image becomes the float32 NCHW tensor a model takes.

The same code prepares the training data and, from an artifact's sidecar, a user's image file,
so an application that follows the sidecar feeds the model exactly what it was trained on.
Only NumPy and Pillow are needed here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]        # (height, width) of the model input, pixels
    channels: int                # 1 (grayscale, PIL mode "L") or 3 (RGB)
    mean: tuple[float, ...]      # per channel, on the [0, 1] scale
    std: tuple[float, ...]       # per channel, on the [0, 1] scale
    resize: str = "bilinear"     # PIL resampling filter used to reach `size`
    layout: str = "NCHW"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["mean"], d["std"] = list(self.size), list(self.mean), list(self.std)
        d["scale"] = "1/255"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(size=tuple(d["size"]), channels=int(d["channels"]), mean=tuple(d["mean"]),
                   std=tuple(d["std"]), resize=d.get("resize", "bilinear"), layout=d.get("layout", "NCHW"))

    def resize_uint8(self, image) -> np.ndarray:
        """PIL image -> uint8 array (C, H, W) at `size` with `channels`."""
        from PIL import Image

        mode = "L" if self.channels == 1 else "RGB"
        image = image.convert(mode)
        h, w = self.size
        if image.size != (w, h):
            image = image.resize((w, h), getattr(Image.Resampling, self.resize.upper()))
        arr = np.asarray(image, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def normalize(self, images_uint8: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> normalized float32 (N, C, H, W)."""
        x = images_uint8.astype(np.float32) / 255.0
        if x.shape[1] == 1 and self.channels == 3:
            x = np.repeat(x, 3, axis=1)
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return (x - mean) / std

    def load_image(self, path: str | Path) -> np.ndarray:
        """An image file -> float32 (1, C, H, W), ready for the model."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                arr = self.resize_uint8(im)
        except (UnidentifiedImageError, OSError) as e:
            from edgecnn.errors import DataError
            raise DataError(f"{path}: not a readable image ({e}). Give a PNG or JPEG file.") from None
        return self.normalize(arr[None])
