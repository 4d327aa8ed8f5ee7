"""`plaster gate --junit`: the gate's verdicts as a JUnit report CI systems render."""

import xml.etree.ElementTree as ET

from orchestrator import junit


def scorecard(*verdicts):
    return {"decision": "HOLD", "candidate_version": "3", "champion_version": "2", "machine": "cpu x2",
            "confidence": 0.95,
            "verdicts": [{"rule": r, "verdict": v, "reason": why, "required": req} for r, v, why, req in verdicts]}


def test_one_test_case_per_rule_with_its_verdict(tmp_path):
    sc = scorecard(("accuracy_min.golden", "PASS", "accuracy on golden 0.93 >= 0.85", False),
                   ("non_inferiority.new", "FAIL", "CI lower bound -0.031 < -0.02", False),
                   ("energy_j_per_1k_max", "NOT_MEASURED", "no RAPL counters", False),
                   ("throughput_min", "NOT_MEASURED", "no GPU to measure on", True))
    root = ET.parse(junit.write(tmp_path / "out" / "gate.xml", "digits", sc, 12.5)).getroot()
    suite = root.find("testsuite")
    assert suite.get("name") == "plaster gate digits v3 vs champion v2" and suite.get("time") == "12.500"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "2", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["accuracy_min.golden", "non_inferiority.new", "energy_j_per_1k_max", "throughput_min"]
    assert cases["accuracy_min.golden"].find("failure") is None and cases["accuracy_min.golden"].find("skipped") is None
    assert cases["non_inferiority.new"].find("failure").get("message") == "CI lower bound -0.031 < -0.02"
    assert cases["energy_j_per_1k_max"].find("skipped").get("message") == "no RAPL counters"
    # A required rule that could not be measured holds the candidate: CI must show it red.
    assert cases["throughput_min"].find("failure").get("type") == "NOT_MEASURED (required)"
    assert {p.get("name"): p.get("value") for p in suite.iter("property")}["decision"] == "HOLD"


def test_reasons_with_markup_stay_text(tmp_path):
    sc = scorecard(("latency_p99_ms_max@1", "FAIL", 'p99 <1 ms & "x" > 2', False))
    case = ET.parse(junit.write(tmp_path / "g.xml", "digits", sc)).getroot().find("testsuite/testcase")
    assert case.find("failure").get("message") == 'p99 <1 ms & "x" > 2'
