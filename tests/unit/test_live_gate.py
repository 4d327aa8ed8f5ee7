"""The live gate's verdicts on paired records: evidence rolls back, time and traffic complete."""

import numpy as np
import pytest

from orchestrator.config import RolloutConfig
from orchestrator.live_gate import COMPLETE, CONTINUE, ROLLBACK, Watched, agree, judge

CFG = RolloutConfig(strategy="canary", bake_s=10, min_requests=50, max_latency_ratio=1.5, max_error_rate=0.01,
                    min_agreement=0.8, confidence=0.99)


def _watched(n: int, ratio: float = 1.0, errors: int = 0, agreed_share: float = 1.0, seed: int = 0) -> Watched:
    rng = np.random.default_rng(seed)
    old = rng.uniform(20e-6, 40e-6, n)
    return Watched(new_s=list(old * ratio * rng.uniform(0.9, 1.1, n)), old_s=list(old), requests=n, new_errors=errors,
                   examples=n, agreed=int(round(n * agreed_share)))


def test_a_model_like_the_old_one_completes_after_baking_and_enough_requests():
    w = _watched(400, ratio=1.05, agreed_share=0.97)
    early = judge(w, CFG, baked_s=3)
    assert early.action == CONTINUE and "baking 3 of 10 s" in early.reasons[0]
    few = judge(w, CFG, baked_s=11, step_requests=20)
    assert few.action == CONTINUE and "20 of 50 requests" in few.reasons[0]
    done = judge(w, CFG, baked_s=11)
    assert done.action == COMPLETE
    assert 1.0 < done.figures["latency_ratio"] < 1.1 and done.figures["error_rate"] == 0


def test_each_rule_rolls_back_on_evidence_before_the_bake_ends():
    slow = judge(_watched(40, ratio=3.0), CFG, baked_s=1)
    assert slow.action == ROLLBACK and slow.reasons[0].startswith("latency: new/old engine time 2.9")
    failing = judge(_watched(60, errors=9), CFG, baked_s=1)
    assert failing.action == ROLLBACK and "9 of 60 requests" in failing.reasons[0] and failing.figures["error_p"] < 0.01
    apart = judge(_watched(200, agreed_share=0.5), CFG, baked_s=1)
    assert apart.action == ROLLBACK and apart.reasons[0].startswith("agreement: the models answered alike on 50.0%")


def test_too_little_evidence_is_not_a_verdict():
    # 1 error in 20 is 5%, above the 1% bound, but not significant at 0.99 with so few requests
    w = _watched(20, errors=1)
    v = judge(w, CFG, baked_s=1)
    assert v.action == CONTINUE and v.figures["error_p"] > 0.01
    # 3 paired runs cannot put a median ratio's CI above the bound, however slow they look
    assert judge(_watched(3, ratio=2.0), CFG, baked_s=1).action == CONTINUE


def test_errors_the_old_model_made_too_are_not_counted_against_the_new_one():
    w = _watched(60)
    w.new_errors, w.old_errors = 3, 30  # the new model failed 3 of the 30 requests the old one answered
    assert judge(w, CFG, baked_s=1).figures["error_rate"] == pytest.approx(0.1)


def test_each_look_tests_at_its_share_of_the_step():
    # 7 errors in 60 against a 1% bound: p ~ 2e-6 -- a verdict at one look, and still at 300
    w = _watched(60, errors=7)
    assert judge(w, CFG, baked_s=1).action == ROLLBACK
    assert judge(w, CFG, baked_s=1, n_looks=300).action == ROLLBACK
    # 3 in 60 (p ~ 0.02): not evidence at 0.99, less so at a three-hundredth of it
    w = _watched(60, errors=3)
    assert judge(w, CFG, baked_s=1).action == CONTINUE
    # 10 paired runs at 2x: enough for a 0.99 interval, not for one at 1 - 0.01/300
    assert judge(_watched(10, ratio=2.0), CFG, baked_s=1).action == ROLLBACK
    assert judge(_watched(10, ratio=2.0), CFG, baked_s=1, n_looks=300).action == CONTINUE


def test_agreement_per_task():
    a = np.array([[0.1, 2.0], [3.0, 0.2]])
    assert agree(a, a[:, ::-1], "classification", 0.1).tolist() == [False, False]
    assert agree(np.array([[1.0, -1.0]]), np.array([[0.5, -3.0]]), "multilabel", 0.1).tolist() == [True]
    assert agree(np.array([[10.5], [0.05]]), np.array([[10.0], [0.2]]), "regression", 0.1).tolist() == [True, False]
