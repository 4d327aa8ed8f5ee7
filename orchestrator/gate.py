"""The gate: rules from pipeline.yaml applied to a scorecard's figures.

Each rule gives PASS, FAIL or NOT_MEASURED with a one-line reason naming the figures; the
decision (PROMOTE / REJECT / HOLD) is derived from the verdicts alone. The gate decides;
it never acts (promote moves aliases).
"""

from __future__ import annotations

from orchestrator.artifacts import EngineScore, Verdict
from orchestrator.config import GateConfig

PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "NOT_MEASURED"
PROMOTE, REJECT, HOLD = "PROMOTE", "REJECT", "HOLD"


def _acc(score: EngineScore | None, slice_name: str) -> float | None:
    if score is None or slice_name not in score.accuracy:
        return None
    return score.accuracy[slice_name].value


def evaluate(candidate: EngineScore, champion: EngineScore | None, gate: GateConfig) -> list[Verdict]:
    out: list[Verdict] = []
    for name, minimum in gate.accuracy_min.items():
        rule, a = f"accuracy_min.{name}", _acc(candidate, name)
        if a is None:
            out.append(Verdict(rule, NOT_MEASURED, f"no '{name}' slice in this snapshot"))
        else:
            out.append(Verdict(rule, PASS if a >= minimum else FAIL, f"accuracy on {name} {a:.4f} {'>=' if a >= minimum else '<'} {minimum}"))
    for name, margin in gate.accuracy_vs_champion.items():
        rule, a, b = f"accuracy_vs_champion.{name}", _acc(candidate, name), _acc(champion, name)
        if champion is None:
            out.append(Verdict(rule, NOT_MEASURED, "no champion yet: the first candidate is judged on absolute rules"))
        elif a is None or b is None:
            out.append(Verdict(rule, NOT_MEASURED, f"no '{name}' slice in this snapshot"))
        else:
            d = a - b
            ok = d >= margin
            out.append(Verdict(rule, PASS if ok else FAIL,
                               f"{name}: candidate {a:.4f} - champion {b:.4f} = {d:+.4f} {'>=' if ok else '<'} {margin:+g}"))
    if gate.latency_p99_ms_max is not None:
        p99 = candidate.latency_p99_ms.value
        ok = p99 is not None and p99 <= gate.latency_p99_ms_max
        out.append(Verdict("latency_p99_ms_max", PASS if ok else FAIL,
                           f"p99 {p99:.3f} ms {'<=' if ok else '>'} {gate.latency_p99_ms_max} ms"))
    if gate.latency_p50_ratio_max is not None:
        if champion is None:
            out.append(Verdict("latency_p50_ratio_max", NOT_MEASURED, "no champion yet to compare latency with"))
        else:
            ratio = candidate.latency_p50_ms.value / champion.latency_p50_ms.value
            ok = ratio <= gate.latency_p50_ratio_max
            out.append(Verdict("latency_p50_ratio_max", PASS if ok else FAIL,
                               f"p50 candidate/champion {ratio:.2f}x {'<=' if ok else '>'} {gate.latency_p50_ratio_max}x"))
    return out


def decide(verdicts: list[Verdict], promotion: str) -> str:
    if any(v.verdict == FAIL for v in verdicts):
        return REJECT
    return HOLD if promotion == "manual" else PROMOTE
