"""The gate: rules from pipeline.yaml applied to a scorecard's figures.

Each rule gives PASS, FAIL or NOT_MEASURED with a one-line reason naming the figures, and
each has one fixed meaning (see GateConfig): comparisons with the champion read the
confidence interval, never a bare difference, so noise neither promotes nor rejects.
The decision is derived from the verdicts alone: any FAIL → REJECT; otherwise a NOT_MEASURED
required rule, or manual promotion → HOLD; otherwise PROMOTE. The gate decides; it never
acts (promote moves aliases).
"""

from __future__ import annotations

from orchestrator.artifacts import Comparison, EngineScore, Verdict
from orchestrator.config import GateConfig

PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "NOT_MEASURED"
PROMOTE, REJECT, HOLD = "PROMOTE", "REJECT", "HOLD"


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


def _ci_pp(ci: tuple[float, float]) -> str:
    return f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] pp"


def evaluate(candidate: EngineScore, champion: EngineScore | None, comparison: Comparison | None,
             gate: GateConfig) -> list[Verdict]:
    out: list[Verdict] = []

    def add(rule: str, verdict: str, reason: str) -> None:
        out.append(Verdict(rule, verdict, reason, required=rule.split(".")[0].split("@")[0] in gate.required))

    conf = f"{100 * gate.confidence:g}% CI"
    for name, minimum in gate.accuracy_min.items():
        fig = candidate.accuracy.get(name)
        if fig is None:
            add(f"accuracy_min.{name}", NOT_MEASURED, f"no '{name}' slice in this snapshot")
        else:
            ok = fig.value >= minimum
            add(f"accuracy_min.{name}", PASS if ok else FAIL,
                f"accuracy on {name} {fig.value:.4f} {'>=' if ok else '<'} {minimum}")

    diffs = {d.slice: d for d in comparison.accuracy} if comparison else {}
    for rule, slices in (("non_inferiority", gate.non_inferiority), ("superiority", gate.superiority)):
        for name in slices:
            d = diffs.get(name)
            if champion is None:
                add(f"{rule}.{name}", NOT_MEASURED, "no champion yet: the first candidate is judged on absolute rules")
            elif d is None:
                add(f"{rule}.{name}", NOT_MEASURED, f"no '{name}' slice in this snapshot")
            else:
                if rule == "non_inferiority":
                    bound, ok, need = -gate.non_inferiority[name], d.ci[0] >= -gate.non_inferiority[name], ">="
                else:
                    bound, ok, need = 0.0, d.ci[0] > 0, ">"
                add(f"{rule}.{name}", PASS if ok else FAIL,
                    f"{name} (n={d.n}): candidate − champion {_pp(d.diff)}, {conf} {_ci_pp(d.ci)}; needs lower bound "
                    f"{need} {_pp(bound)} (McNemar p={d.mcnemar_p:.3g}; {d.candidate_only} vs {d.champion_only} discordant)")

    if gate.latency_p99_ms_max is not None:
        for lat in candidate.latency:
            # Like the ratio: FAIL when the SLA is broken beyond doubt, not on one stray spike.
            low = lat.p99_ci[0] if lat.p99_ci else lat.p99_ms
            over = low > gate.latency_p99_ms_max
            ci = f", {conf} [{lat.p99_ci[0]:.3f}, {lat.p99_ci[1]:.3f}]" if lat.p99_ci else ""
            add(f"latency_p99_ms_max@{lat.batch}", FAIL if over else PASS,
                f"p99 at batch {lat.batch} {lat.p99_ms:.3f} ms{ci} over {lat.calls} calls; lower bound "
                f"{'>' if over else '<='} {gate.latency_p99_ms_max:g} ms")

    if gate.latency_ratio_max is not None:
        if comparison is None:
            add("latency_ratio_max", NOT_MEASURED, "no champion yet to compare latency with")
        for r in comparison.latency if comparison else ():
            slower = r.ci[0] > gate.latency_ratio_max
            add(f"latency_ratio_max@{r.batch}", FAIL if slower else PASS,
                f"p50 candidate/champion at batch {r.batch} {r.ratio:.3f}x, {conf} [{r.ci[0]:.3f}, {r.ci[1]:.3f}] over "
                f"{r.rounds} rounds; lower bound {'>' if slower else '<='} {gate.latency_ratio_max:g}x")

    if gate.throughput_min is not None:
        t = candidate.throughput
        if t.value is None:
            add("throughput_min", NOT_MEASURED, t.note or "no batch size met the latency SLA")
        else:
            ok = t.value >= gate.throughput_min
            add("throughput_min", PASS if ok else FAIL,
                f"{t.value:,.0f} samples/s ({t.note}) {'>=' if ok else '<'} {gate.throughput_min:,.0f}")

    if gate.size_bytes_max is not None:
        ok = candidate.size_bytes <= gate.size_bytes_max
        add("size_bytes_max", PASS if ok else FAIL,
            f"engine {candidate.size_bytes:,} bytes {'<=' if ok else '>'} {gate.size_bytes_max:,}")

    if gate.energy_j_per_1k_max is not None:
        e = candidate.energy_j_per_1k
        if e.value is None:
            add("energy_j_per_1k_max", NOT_MEASURED, e.note)
        else:
            ok = e.value <= gate.energy_j_per_1k_max
            add("energy_j_per_1k_max", PASS if ok else FAIL,
                f"{e.value:.4g} J per 1,000 inferences {'<=' if ok else '>'} {gate.energy_j_per_1k_max:g} ({e.note})")
    return out


def decide(verdicts: list[Verdict], promotion: str) -> str:
    if any(v.verdict == FAIL for v in verdicts):
        return REJECT
    if any(v.verdict == NOT_MEASURED and v.required for v in verdicts):
        return HOLD
    return HOLD if promotion == "manual" else PROMOTE


def hold_reasons(verdicts: list[Verdict], promotion: str) -> list[str]:
    """Why a passing candidate is held, for the record and the CLI."""
    out = [f"{v.rule} is required but NOT_MEASURED" for v in verdicts if v.verdict == NOT_MEASURED and v.required]
    if promotion == "manual":
        out.append("promotion: manual; awaiting approval")
    return out
