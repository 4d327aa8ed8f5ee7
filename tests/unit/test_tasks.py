"""The tasks' metrics and paired statistics on examples with known answers."""

import numpy as np
import pytest

from orchestrator.tasks import task_for


def test_regression_with_two_targets_mae_rmse_and_a_paired_difference():
    t = task_for("regression")
    y = np.zeros((4, 2), np.float32)
    good = np.array([[1, 1], [1, 1], [1, 1], [1, 1]], np.float32)  # error 1 everywhere
    bad = np.array([[3, 1], [3, 1], [3, 1], [3, 1]], np.float32)  # errors 3 and 1
    g, b = t.per_example(good, y), t.per_example(bad, y)
    assert t.value("mae", g) == pytest.approx(1.0) and t.value("mae", b) == pytest.approx(2.0)
    assert t.value("rmse", b) == pytest.approx(np.sqrt(5.0))
    d = t.paired("mae", g, b, 0.95, "new")
    assert d.diff == pytest.approx(-1.0) and d.ci == pytest.approx((-1.0, -1.0)), "constant gap: no spread"
    assert d.metric == "mae" and d.higher_is_better is False and d.mcnemar_p is None


def test_multilabel_micro_f1_and_its_interval():
    t = task_for("multilabel")
    y = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    logits = np.array([[2.0, -1.0, -1.0], [1.0, 1.0, -1.0]])  # TP 2, FP 1, FN 1
    rows = t.per_example(logits, y)
    assert rows.sum(0).tolist() == [2, 1, 1]
    assert t.value("micro_f1", rows) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    perfect = t.per_example(np.array([[-1.0, -1.0, 2.0]]), np.array([[0, 0, 1]], np.float32))
    f = t.figure("micro_f1", np.repeat(np.concatenate([rows, perfect]), 50, axis=0), 0.95)
    assert f.ci[0] < f.value < f.ci[1]


def test_classification_keeps_mcnemar():
    t = task_for("classification")
    y = np.array([0, 1, 1, 0] * 25)
    cand = t.per_example(np.eye(2)[y], y)
    champ = t.per_example(np.eye(2)[1 - y], y)
    d = t.paired("accuracy", cand, champ, 0.95, "golden")
    assert d.diff == 1.0 and d.mcnemar_p < 1e-6 and d.candidate_only == 100
