from edgecnn.report.rows import mark_pareto, pareto_front


def test_front_keeps_points_nothing_beats():
    lat = [1.0, 2.0, 3.0, 1.5, 2.5]
    acc = [90.0, 95.0, 97.0, 89.0, 95.0]
    # (1.5, 89) is beaten by (1, 90); (2.5, 95) by (2, 95)
    assert pareto_front(lat, acc) == [True, True, True, False, False]


def test_ties_and_missing_values():
    assert pareto_front([1.0, 1.0], [90.0, 90.0]) == [True, True]       # equal points dominate neither
    assert pareto_front([1.0, None, 2.0], [90.0, 99.0, None]) == [True, False, False]
    assert pareto_front([], []) == []


def _row(artifact, target, p50, top1, status="ok"):
    return {"artifact": artifact, "target": target, "status": status, "latency_ms": {"p50": p50},
            "accuracy": {"top1": top1}}


def test_front_per_target_and_failed_rows_left_out():
    rows = [_row("a", "pi", 10, 90), _row("b", "pi", 5, 95), _row("a", "x86", 1, 90), _row("b", "x86", 2, 95),
            _row("c", "x86", 0.5, 99, status="failed")]
    front = mark_pareto(rows)
    assert front == {"pi": ["b@pi"], "x86": ["a@x86", "b@x86"]}
    assert [r["pareto"] for r in rows] == [False, True, True, True, False]
