"""The gate: rules from pipeline.yaml applied to a scorecard's figures.

Each rule gives PASS, FAIL or NOT_MEASURED with a one-line reason naming the figures, and
each has one fixed meaning (see GateConfig): comparisons with the champion read the
confidence interval, never a bare difference, so noise neither promotes nor rejects.
The decision is derived from the verdicts alone: any FAIL → REJECT; otherwise a NOT_MEASURED
required rule, or manual promotion → HOLD; otherwise PROMOTE. The gate decides; it never
acts (promote moves aliases).
"""

from __future__ import annotations

from orchestrator.artifacts import Comparison, EngineScore, GateDecision, Verdict
from orchestrator.config import GateConfig
from orchestrator.tasks import TASKS, Task

PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "NOT_MEASURED"
PROMOTE, REJECT, HOLD = GateDecision.PROMOTE, GateDecision.REJECT, GateDecision.HOLD


_PCT = ("accuracy", "micro_f1")  # shown in percentage points; error metrics in their own units


def _pp(x: float, metric: str = "accuracy") -> str:
    return f"{100 * x:+.2f} pp" if metric in _PCT else f"{x:+.4g}"


def _ci_pp(ci: tuple[float, float], metric: str = "accuracy") -> str:
    if metric in _PCT:
        return f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] pp"
    return f"[{ci[0]:+.4g}, {ci[1]:+.4g}]"


def accuracy_bounds(gate: GateConfig, task: Task) -> dict[str, float]:
    """gate.accuracy_min, or its default: {golden: 0.8, new: 0.8} for classification."""
    if gate.accuracy_min is not None:
        return dict(gate.accuracy_min)
    # A pipeline that bounds its metrics itself (metric_min / metric_max) gets no default.
    default = task.name == "classification" and not gate.metric_min and not gate.metric_max
    return {"golden": 0.8, "new": 0.8} if default else {}


def margins(gate: GateConfig, task: Task) -> list[tuple[str, str, str, float]]:
    """(rule name, slice, metric, margin) of every non-inferiority rule: a bare margin is in
    the task's main metric; the default is {golden: 0.05, new: 0.02} where that metric is a
    proportion (accuracy, micro-F1) and none for regression, whose units are the data's."""
    given = gate.non_inferiority
    if given is None:
        given = {"golden": 0.05, "new": 0.02} if task.primary in _PCT else {}
    out = []
    for sl, v in given.items():
        if isinstance(v, dict):
            out += [(f"non_inferiority.{sl}.{m}", sl, m, float(x)) for m, x in v.items()]
        else:
            out.append((f"non_inferiority.{sl}", sl, task.primary, float(v)))
    return out


def superiorities(gate: GateConfig, task: Task) -> list[tuple[str, str, str]]:
    if isinstance(gate.superiority, dict):
        return [(f"superiority.{sl}.{m}", sl, m) for sl, ms in gate.superiority.items() for m in ms]
    return [(f"superiority.{sl}", sl, task.primary) for sl in gate.superiority]


def evaluate(candidate: EngineScore, champion: EngineScore | None, comparison: Comparison | None,
             gate: GateConfig, task: Task = TASKS["classification"]) -> list[Verdict]:
    out: list[Verdict] = []

    def add(rule: str, verdict: str, reason: str) -> None:
        out.append(Verdict(rule, verdict, reason, required=rule.split(".")[0].split("@")[0] in gate.required))

    conf = f"{100 * gate.confidence:g}% CI"
    bounds = [(f"accuracy_min.{sl}", sl, "accuracy", v, True) for sl, v in accuracy_bounds(gate, task).items()]
    bounds += [(f"metric_min.{sl}.{m}", sl, m, v, True) for sl, ms in gate.metric_min.items() for m, v in ms.items()]
    bounds += [(f"metric_max.{sl}.{m}", sl, m, v, False) for sl, ms in gate.metric_max.items() for m, v in ms.items()]
    for rule, name, metric, bound, at_least in bounds:
        fig = (candidate.metrics.get(metric) or ({name: candidate.accuracy[name]} if metric == candidate.metric
                                                  and name in candidate.accuracy else {})).get(name)
        if fig is None:
            add(rule, NOT_MEASURED, f"no '{name}' slice in this snapshot")
            continue
        ok = fig.value >= bound if at_least else fig.value <= bound
        sign = (">=" if ok else "<") if at_least else ("<=" if ok else ">")
        add(rule, PASS if ok else FAIL, f"{metric} on {name} {fig.value:.4f} {sign} {bound}")

    diffs = {(d.slice, d.metric): d for d in comparison.accuracy} if comparison else {}
    checks = [(r, sl, m, "non_inferiority", x) for r, sl, m, x in margins(gate, task)]
    checks += [(r, sl, m, "superiority", 0.0) for r, sl, m in superiorities(gate, task)]
    for rule, name, metric, kind, margin in checks:
        d = diffs.get((name, metric))
        if champion is None:
            add(rule, NOT_MEASURED, "no champion yet: the first candidate is judged on absolute rules")
            continue
        if d is None:
            add(rule, NOT_MEASURED, f"no '{name}' slice in this snapshot")
            continue
        higher = task.metrics.get(metric, True)
        # The bound of the CI on the worse side: lower for accuracy or F1, upper for an error.
        worst = d.ci[0] if higher else d.ci[1]
        if kind == "non_inferiority":
            bound = -margin if higher else margin
            ok = worst >= bound if higher else worst <= bound
            need = f"{'lower' if higher else 'upper'} bound {'>=' if higher else '<='} {_pp(bound, metric)}"
        else:
            bound, ok = 0.0, (worst > 0 if higher else worst < 0)
            need = f"{'lower' if higher else 'upper'} bound {'>' if higher else '<'} {_pp(0.0, metric)}"
        mcnemar = (f" (McNemar p={d.mcnemar_p:.3g}; {d.candidate_only} vs {d.champion_only} discordant)"
                   if d.mcnemar_p is not None else "")
        add(rule, PASS if ok else FAIL,
            f"{name} (n={d.n}): {metric} candidate − champion {_pp(d.diff, metric)}, {conf} {_ci_pp(d.ci, metric)}; "
            f"needs {need}{mcnemar}")

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
