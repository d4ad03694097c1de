"""Detecting tasks whose images look alike (the method's known weak spot)."""

from __future__ import annotations

import numpy as np

from labelsharing.appearance import similar_task_warnings, task_confusion


def _blobs(rng: np.random.Generator, n: int, bright: bool) -> np.ndarray:
    """(n, 32, 32) slices: a bright disc (bright=True) or a dark ring on grey, at random places."""
    yy, xx = np.mgrid[:32, :32]
    out = np.empty((n, 32, 32), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(10, 22, 2)
        r = np.hypot(yy - cy, xx - cx)
        out[i] = (r < 7).astype(np.float32) if bright else 0.5 - 0.5 * ((r > 5) & (r < 9))
        out[i] += rng.normal(0, 0.05, (32, 32))
    return out


def test_distinct_tasks_are_not_confused():
    rng = np.random.default_rng(0)
    confusion = task_confusion(["A", "B"], [_blobs(rng, 40, True), _blobs(rng, 40, False)])
    np.testing.assert_allclose(confusion.sum(axis=1), 1.0)
    assert confusion[0, 1] < 0.05 and confusion[1, 0] < 0.05
    assert similar_task_warnings(["A", "B"], [_blobs(rng, 40, True), _blobs(rng, 40, False)]) == []


def test_look_alike_tasks_are_warned_about():
    rng = np.random.default_rng(1)
    warnings = similar_task_warnings(["A", "B", "C"], [_blobs(rng, 40, True), _blobs(rng, 40, True),
                                                       _blobs(rng, 40, False)])
    assert any("'A' slices look most like 'B'" in w for w in warnings)
    assert not any("'C'" in w for w in warnings)
    assert all("Pin their labels" in w for w in warnings)
    only_c = similar_task_warnings(["A", "B", "C"], [_blobs(rng, 40, True), _blobs(rng, 40, True),
                                                     _blobs(rng, 40, False)], involving="C")
    assert only_c == []


def test_single_task_needs_no_check():
    assert similar_task_warnings(["A"], [np.zeros((3, 32, 32))]) == []
