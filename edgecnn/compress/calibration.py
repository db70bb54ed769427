"""Calibration sets for int8 quantization: which images set the activation ranges.

Two ways to name them:

* the run's own data: the DataBundle's `calibration` split (`data.calibration_size` images drawn,
  seeded, from the train split, so no validation or test image ever sets a range);
* a YAML manifest under `calibration/`, for a fixed, reviewable set (e.g. images from the
  deployment camera, or the same 256 images for every model in a comparison).

Manifest format (every key optional except where noted; see `calibration/mnist5k-256.yaml`):

    source: mnist5k        # a data source as in `data.source`; null: the run's own data source
    split: train           # own source only: 'train' or 'calibration' (val/test are refused: they
                           #   measure accuracy, and calibrating on them flatters the result)
    count: 256             # images drawn (seeded) from the split / source; null: all of them
    seed: 0                # the draw's seed (independent of the run's seed, so the set is fixed)
    indices: [12, 40, ...] # explicit positions in the source (the numbering `Split.indices` uses);
                           #   replaces split/count
    files: [imgs/*.png]    # image files or globs, relative to the manifest; replaces source
    preprocess: model      # 'model': the model's own contract (size, channels, mean, std), the only
                           #   safe choice; or a mapping {mean: [...], std: [...], resize: bilinear}
                           #   that overrides normalisation (size and channels always follow the model)

Images are always resized to the model's input size and channel count through the same PIL path
as training data (`Preprocess.resize_uint8`), then normalised.
"""
from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from edgecnn.config import check, from_dict
from edgecnn.data import DataBundle, Preprocess
from edgecnn.errors import DataError, EdgecnnError, did_you_mean

__all__ = ["CalibrationManifest", "CalibrationSet", "load_calibration", "resolve_manifest",
           "read_manifest"]

MANIFEST_DIR = "calibration"


@dataclass
class CalibrationManifest:
    source: str | None = None                          # data source; null: the run's own
    split: Literal["train", "calibration"] = "train"   # own source: which split to draw from
    count: int | None = None                           # images to draw; null: all candidates
    seed: int = 0                                      # seed of the draw
    indices: list[int] | None = None                   # explicit positions in the source
    files: list[str] | None = None                     # image files / globs, relative to the manifest
    preprocess: Literal["model"] | dict[str, Any] = "model"   # 'model' or {mean, std, resize}

    def __post_init__(self):
        check(self.count is None or self.count >= 1, "count", f"{self.count} must be >= 1")
        check(not (self.files and self.indices), "files",
              "give either files or indices, not both")
        check(not (self.files and self.source), "files",
              "files replace the data source: drop `source` or drop `files`")
        if isinstance(self.preprocess, dict):
            extra = set(self.preprocess) - {"mean", "std", "resize"}
            check(not extra, "preprocess", f"unknown keys {sorted(extra)}: only mean, std and resize can "
                                           "be overridden (size and channels always follow the model)")


@dataclass
class CalibrationSet:
    batches: list[torch.Tensor]                 # normalized float32 NCHW, on CPU
    info: dict[str, Any] = field(default_factory=dict)   # source, count, indices/files, sha256

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.batches)


def resolve_manifest(name: str | Path, root: str | Path | None = None) -> Path:
    """A manifest path as given, or under `calibration/` (with or without `.yaml`)."""
    p = Path(name).expanduser()
    base = Path(root) if root is not None else Path.cwd()
    tries = [p, base / p, base / MANIFEST_DIR / p, base / MANIFEST_DIR / f"{p.name}.yaml"]
    for t in tries:
        if t.is_file():
            return t
    found = sorted(q.stem for q in (base / MANIFEST_DIR).glob("*.y*ml")) if (base / MANIFEST_DIR).is_dir() else []
    hint = did_you_mean(p.stem, found)
    avail = f" Manifests in {base / MANIFEST_DIR}: {', '.join(found)}." if found else \
        f" No manifests found in {base / MANIFEST_DIR}."
    raise EdgecnnError(f"quantize.calibration: manifest '{name}' not found.{hint}{avail} "
                       "Give a path to a YAML file or the name of one under calibration/.")


def read_manifest(path: str | Path) -> CalibrationManifest:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise EdgecnnError(f"{path}: not valid YAML ({e}).") from None
    if not isinstance(data, dict):
        raise EdgecnnError(f"{path}: a calibration manifest is a mapping of settings, got {type(data).__name__}.")
    return from_dict(CalibrationManifest, data, key=str(path))


def _draw(n_available: int, count: int | None, seed: int) -> np.ndarray:
    if count is None or count >= n_available:
        return np.arange(n_available)
    return np.sort(np.random.default_rng(seed).permutation(n_available)[:count])


def _from_manifest(data: DataBundle, m: CalibrationManifest, path: Path, samples: int
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    pre = data.preprocess
    if isinstance(m.preprocess, dict):
        pre = Preprocess(pre.size, pre.channels,
                         tuple(float(v) for v in m.preprocess.get("mean", pre.mean)),
                         tuple(float(v) for v in m.preprocess.get("std", pre.std)),
                         m.preprocess.get("resize", pre.resize))
        if len(pre.mean) != pre.channels or len(pre.std) != pre.channels:
            raise EdgecnnError(f"{path}: preprocess.mean/std need {pre.channels} value(s) for this "
                               f"{pre.channels}-channel model (got mean {list(pre.mean)}, std {list(pre.std)}).")
    info: dict[str, Any] = {"manifest": str(path), "preprocess": pre.to_dict()}
    count = m.count if m.count is not None else samples

    if m.files:
        paths: list[Path] = []
        for pattern in m.files:
            full = pattern if Path(pattern).is_absolute() else str(path.parent / pattern)
            hits = sorted(glob.glob(full, recursive=True))
            if not hits:
                raise EdgecnnError(f"{path}: files entry '{pattern}' matches no file "
                                   f"(looked for {full}). Fix the path or glob.")
            paths += [Path(h) for h in hits]
        chosen = [paths[i] for i in _draw(len(paths), count, m.seed)]
        x = torch.from_numpy(np.concatenate([pre.load_image(p) for p in chosen]))
        info.update(source="files", files=[str(p) for p in chosen])
        return x, info

    own = m.source is None or m.source == data.source
    if own and m.indices is None:
        split = data.splits[m.split]
        pick = _draw(len(split), count, m.seed)
        uint8 = split.images[torch.from_numpy(pick)]
        info.update(source=data.source, split=m.split, indices=split.indices[pick].tolist())
        return torch.from_numpy(pre.normalize(uint8.numpy())), info

    # Another source, or explicit positions: read the raw source and resize like training data does.
    from PIL import Image

    from edgecnn.data.sources import DATA_SOURCES, parse_source

    spec = m.source or data.source
    name, arg = parse_source(spec)
    raw = DATA_SOURCES.get(name, key=f"{path}: source")(arg, {})
    n = len(raw.labels)
    if m.indices is not None:
        bad = [i for i in m.indices if not 0 <= i < n]
        if bad:
            raise EdgecnnError(f"{path}: indices {bad[:5]} are outside 0..{n - 1} ('{spec}' has {n} images).")
        if own:
            held = set(data.splits["val"].indices.tolist()) | set(data.splits["test"].indices.tolist())
            leak = [i for i in m.indices if i in held]
            if leak:
                raise EdgecnnError(f"{path}: indices {leak[:5]} ({len(leak)} in all) are validation or test "
                                   "images of this run: calibrating on them flatters the accuracy. "
                                   "Pick training images (split: train) instead.")
        pick = np.asarray(m.indices, np.int64)
        if m.count is not None:
            pick = pick[_draw(len(pick), m.count, m.seed)]
    else:
        pick = _draw(n, count, m.seed)
    out = []
    for i in pick:
        img = raw.images[i]
        pil = Image.fromarray(img) if isinstance(img, np.ndarray) else Image.open(img)
        out.append(pre.resize_uint8(pil))
    uint8 = np.stack(out) if out else np.zeros((0, pre.channels, *pre.size), np.uint8)
    info.update(source=spec, indices=pick.tolist())
    return torch.from_numpy(pre.normalize(uint8)), info


def load_calibration(data: DataBundle, samples: int, manifest: str | Path | None = None,
                     batch_size: int = 32, root: str | Path | None = None) -> CalibrationSet:
    """`samples` normalized calibration images, checked for count and finiteness, in batches."""
    if manifest is None:
        split = data.splits["calibration"]
        if len(split) < samples:
            raise DataError(
                f"quantize.calibration_samples: the data's calibration split has {len(split)} images, "
                f"{samples} were asked for. Lower quantize.calibration_samples to {len(split)}, or raise "
                f"data.calibration_size to {samples} (it draws from the {len(data.splits['train'])} "
                "training images), or name a manifest in quantize.calibration.")
        x = data.normalize(split.images[:samples])
        info = {"source": data.source, "split": "calibration",
                "indices": split.indices[:samples].tolist(), "preprocess": data.preprocess.to_dict()}
        where = "the data's calibration split"
    else:
        path = resolve_manifest(manifest, root)
        m = read_manifest(path)
        x, info = _from_manifest(data, m, path, samples)
        where = f"manifest {path}"
        if len(x) < samples:
            raise DataError(
                f"quantize.calibration: {where} selects {len(x)} images, quantize.calibration_samples "
                f"asks for {samples}. Lower calibration_samples to {len(x)}, or make the manifest select "
                "more (raise `count`, add `indices` or `files`).")
        x = x[:samples]
        info["indices" if "indices" in info else "files"] = info.get("indices", info.get("files"))[:samples]

    finite = torch.isfinite(x.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        ids = info.get("indices") or info.get("files") or bad
        names = [ids[i] for i in bad[:5]]
        raise DataError(
            f"quantize.calibration: {len(bad)} of {len(x)} calibration images from {where} hold NaN or inf "
            f"after preprocessing (first: {names}). Activation ranges measured on them would be "
            "meaningless. Check the preprocessing (a std of 0 divides by zero) and the image files, "
            "or drop those images from the calibration set.")
    info["count"] = int(len(x))
    info["sha256"] = hashlib.sha256(x.numpy().tobytes()).hexdigest()
    return CalibrationSet([x[i:i + batch_size] for i in range(0, len(x), batch_size)], info)
