"""The measurement arithmetic, on fake sessions with known outputs and a fake clock."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgecnn.bench import agent
from edgecnn.bench.measure import MeasureConfig, Measurement, measure
from edgecnn.errors import RecipeError
from edgecnn.train import topk_accuracy


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeSession:
    """Returns fixed logits per row index encoded in the input; each call advances the clock."""

    def __init__(self, logits: np.ndarray, clock: FakeClock | None = None, durations=None, static_batch=None):
        self.logits, self.clock, self.calls = logits, clock, 0
        self.durations = list(durations or [])
        self.static_batch = static_batch

    def run(self, x):
        if self.static_batch and len(x) != self.static_batch:
            raise ValueError(f"this model takes batch {self.static_batch}, got {len(x)}")
        if self.clock is not None:
            self.clock.t += self.durations[self.calls % len(self.durations)] if self.durations else 0.001
        self.calls += 1
        idx = x[:, 0, 0, 0].astype(int)
        return self.logits[idx]


def indexed_inputs(n: int) -> np.ndarray:
    x = np.zeros((n, 1, 2, 2), np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    return x


def test_latency_stats_percentiles():
    s = agent.latency_stats(list(range(1, 101)))
    assert s["runs"] == 100
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5)
    assert s["std"] == pytest.approx(np.std(np.arange(1, 101)), abs=1e-4)
    assert (s["min"], s["max"]) == (1, 100)
    with pytest.raises(ValueError):
        agent.latency_stats([])


def test_time_runs_excludes_warmup_and_counts_runs():
    clock = FakeClock()
    # warm-up calls take 1 s each (as a first call compiling would), timed calls 2 ms and 4 ms
    sess = FakeSession(np.zeros((1, 3), np.float32), clock, durations=[1.0, 1.0, 0.002, 0.004])
    samples = agent.time_runs(sess.run, indexed_inputs(1), warmup=2, runs=10, clock=clock)
    assert len(samples) == 10 and sess.calls == 12
    assert max(samples) == pytest.approx(1000.0)  # the cycle repeats: 2 of every 4 calls take 1 s
    sess = FakeSession(np.zeros((1, 3), np.float32), clock, durations=[0.002, 0.004])
    samples = agent.time_runs(sess.run, indexed_inputs(1), warmup=3, runs=8, clock=clock)
    assert samples == pytest.approx([4.0, 2.0, 4.0, 2.0, 4.0, 2.0, 4.0, 2.0])


def test_time_budget_stops_after_budget_but_not_before_min_runs():
    clock = FakeClock()
    sess = FakeSession(np.zeros((1, 3), np.float32), clock, durations=[0.25])   # exact in binary
    samples = agent.time_runs(sess.run, indexed_inputs(1), warmup=0, runs=0, time_budget_s=1.0, min_runs=3,
                              clock=clock)
    assert len(samples) == 4           # 250 ms each: the 4th call reaches 1 s
    samples = agent.time_runs(sess.run, indexed_inputs(1), warmup=0, runs=0, time_budget_s=0.001, min_runs=5,
                              clock=clock)
    assert len(samples) == 5           # the budget was spent at once, min_runs still made
    samples = agent.time_runs(sess.run, indexed_inputs(1), warmup=0, runs=4, time_budget_s=100, clock=clock)
    assert len(samples) == 4           # runs caps a generous budget


def test_measure_accuracy_agreement_and_latency_on_fake_session():
    n, c = 10, 6
    logits = np.full((n, c), -1.0, np.float32)
    truth = np.arange(n) % c
    logits[np.arange(n), truth] = 5.0           # top-1 right everywhere ...
    labels = truth.copy()
    labels[:3] = (truth[:3] + 1) % c            # ... except 3 labels, whose class ranks 2nd
    logits[np.arange(3), labels[:3]] = 4.0
    reference = logits.copy()
    reference[0, 5] = 9.5                      # the reference disagrees on image 0 only: top-1 agreement 90 %
    clock = FakeClock()
    sess = FakeSession(logits, clock, durations=[0.001, 0.003])
    cfg = MeasureConfig(runs=20, warmup=2, eval_batch=4, throughput_batch=0)
    row, out = measure(sess, indexed_inputs(n), labels, reference, cfg, name="fake", runtime="fake", clock=clock)
    assert np.array_equal(out, logits)
    assert row.top1 == 70.0 and row.top5 == 100.0 and row.n_images == n
    assert row.agreement_top1 == 90.0
    assert row.max_abs_diff == pytest.approx(10.5)
    assert row.latency_ms["runs"] == 20 and row.latency_ms["p50"] == pytest.approx(2.0)
    assert row.latency_ms["mean"] == pytest.approx(2.0) and row.latency_ms["std"] == pytest.approx(1.0)
    assert row.throughput_batch == 1 and row.throughput_ips == pytest.approx(500.0)
    assert row.eval_batch == 4 and row.peak_rss_mb > 0
    d = row.to_dict()
    assert json.loads(json.dumps(d))["top1"] == 70.0 and d["artifact"] == "fake"
    assert Measurement.from_dict(d) == row


def test_static_batch_session_falls_back_to_batch_1():
    logits = np.eye(4, dtype=np.float32)
    sess = FakeSession(logits, static_batch=1)
    row, _ = measure(sess, indexed_inputs(4), np.arange(4), None, MeasureConfig(runs=5, warmup=1, eval_batch=64,
                                                                                throughput_batch=8))
    assert row.eval_batch == 1 and row.throughput_batch == 1 and row.top1 == 100.0
    assert row.agreement_top1 is None


def test_limit_measures_a_prefix():
    logits = np.eye(5, dtype=np.float32)
    row, out = measure(FakeSession(logits), indexed_inputs(5), np.arange(5), logits,
                       MeasureConfig(runs=3, warmup=0, limit=2, throughput_batch=0))
    assert row.n_images == 2 and out.shape == (2, 5)


def test_topk_matches_edgecnn_train():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((500, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 500)
    assert agent.topk_accuracy(logits, labels) == topk_accuracy(torch.from_numpy(logits), torch.from_numpy(labels))


def test_agreement_shape_mismatch_is_explained():
    with pytest.raises(agent.AgentError, match="different"):
        agent.agreement(np.zeros((3, 4)), np.zeros((2, 4)))


@pytest.mark.parametrize("kwargs, key", [({"runs": 0}, "runs"), ({"warmup": -1}, "warmup"),
                                         ({"time_budget_s": 0}, "time_budget_s"), ({"limit": 0}, "limit")])
def test_measure_config_validation_names_the_key(kwargs, key):
    with pytest.raises(RecipeError) as e:
        MeasureConfig(**kwargs)
    assert e.value.key == key


def test_environment_reports_cpu_flags_and_runtimes():
    env = agent.environment(["onnxruntime", "torch"])
    assert env["cpu"]["model"] and isinstance(env["cpu"]["flags"], list)
    assert isinstance(env["cpu"]["ort_u8s8_saturates"], bool)     # the probe ran, it did not fail
    assert "ort_u8s8_saturates" not in agent.environment(["torch"])["cpu"]
    assert set(env["cpu"]) >= {"avx512_vnni", "amx", "logical_cpus"}
    assert env["runtimes"]["torch"]["version"] == torch.__version__.split("+")[0]


def test_u8s8_probe_bytes_are_the_documented_model():
    """The agent carries its probe serialized (a device has no onnx package): rebuild it and compare."""
    import base64

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = {"xs": np.array(1.0, np.float32), "xz": np.array(0, np.uint8), "w": np.full((1, 4, 1, 1), 127, np.int8),
         "ws": np.array([1.0], np.float32), "wz": np.array([0], np.int8), "ys": np.array(1000.0, np.float32),
         "yz": np.array(0, np.uint8)}
    graph = helper.make_graph([helper.make_node("QLinearConv", ["x", *c], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 1, 1])],
                              [numpy_helper.from_array(v, k) for k, v in c.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="")
    model.ir_version = 9
    embedded = base64.b64decode(agent._U8S8_PROBE)
    assert embedded == model.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(embedded))
