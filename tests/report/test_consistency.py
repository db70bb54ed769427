import numpy as np
import pytest

from edgecnn.report.classes import per_class
from edgecnn.report.consistency import consistency_matrix


def _onehot(classes, k=4, scale=1.0):
    out = np.zeros((len(classes), k), np.float32)
    out[np.arange(len(classes)), classes] = scale
    return out


def test_pairwise_agreement_and_max_diff():
    a = _onehot([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    b = a.copy()
    b[0, 0] += 0.25                       # same answer, logits moved
    c = _onehot([0, 1, 2, 3, 0, 1, 2, 3, 1, 2])   # differs on images 8 and 9
    m = consistency_matrix({"a": a, "b": b, "c": c}, threshold=99.0)
    assert m["names"] == ["a", "b", "c"] and m["n"] == 10
    assert m["top1_agreement"][0][1] == 100.0 and m["top1_agreement"][0][2] == 80.0
    assert m["top1_agreement"][2][0] == 80.0 and m["top1_agreement"][1][1] == 100.0
    assert m["max_abs_diff"][0][1] == pytest.approx(0.25) and m["max_abs_diff"][0][2] == pytest.approx(1.0)
    assert [(f["a"], f["b"], f["indices"], f["n_differ"]) for f in m["flagged"]] == \
           [("a", "c", [8, 9], 2), ("b", "c", [8, 9], 2)]


def test_threshold_and_index_cap():
    a = _onehot([0] * 100)
    b = _onehot([1] * 30 + [0] * 70)
    m = consistency_matrix({"a": a, "b": b}, threshold=50.0)
    assert m["flagged"] == []
    m = consistency_matrix({"a": a, "b": b}, threshold=99.0, max_indices=5)
    f, = m["flagged"]
    assert f["top1_agreement"] == 70.0 and f["n_differ"] == 30 and f["indices"] == [0, 1, 2, 3, 4] and f["truncated"]


def test_predicted_classes_only_and_prefix():
    logits = _onehot([0, 1, 2, 3])
    preds = np.array([0, 1, 2, 0, 3, 3])   # longer: compared on the common 4 images
    m = consistency_matrix({"logits": logits, "preds": preds})
    assert m["n"] == 4 and m["top1_agreement"][0][1] == 75.0 and m["max_abs_diff"][0][1] is None


def test_class_count_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"a: \(3, 4\), b: \(3, 5\)"):
        consistency_matrix({"a": np.zeros((3, 4)), "b": np.zeros((3, 5))})


def test_per_class_precision_recall():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 1, 1])
    r = per_class(preds, labels, ["cat", "dog", "owl"])
    c = {x["class"]: x for x in r["classes"]}
    assert c["cat"]["precision"] == 100.0 and c["cat"]["recall"] == pytest.approx(66.67)
    assert c["dog"]["precision"] == 50.0 and c["dog"]["recall"] == 100.0
    assert c["owl"]["precision"] is None and c["owl"]["recall"] == 0.0 and c["owl"]["support"] == 1
    assert r["confusion"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]] and r["top1"] == pytest.approx(66.67)
