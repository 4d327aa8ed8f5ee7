"""The gate's verdicts as JUnit XML, the test-report format CI systems share (GitLab CI and
Jenkins render it as they come; GitHub Actions through a report action, as the README's job
shows): one test case per gate rule, PASS passed, FAIL failed
with its reason, NOT_MEASURED skipped with why (a failure when the rule is `required`,
since that holds the candidate).

Only formats a scorecard that is already judged; never measures or decides anything.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def write(path: Path, pipeline: str, scorecard: dict[str, Any], seconds: float | None = None) -> Path:
    """Write `scorecard` (the JSON form `plaster gate --json` prints) to `path` as JUnit XML."""
    verdicts = scorecard["verdicts"]
    failed = [v for v in verdicts if v["verdict"] == "FAIL" or (v["verdict"] == "NOT_MEASURED" and v["required"])]
    skipped = [v for v in verdicts if v["verdict"] == "NOT_MEASURED" and not v["required"]]
    candidate = scorecard.get("candidate_version") or "candidate"
    champion = scorecard.get("champion_version")
    name = f"plaster gate {pipeline} v{candidate}" + (f" vs champion v{champion}" if champion else " (no champion)")
    suites = ET.Element("testsuites", name="plaster gate", tests=str(len(verdicts)), failures=str(len(failed)),
                        skipped=str(len(skipped)), errors="0")
    suite = ET.SubElement(suites, "testsuite", name=name, tests=str(len(verdicts)), failures=str(len(failed)),
                          skipped=str(len(skipped)), errors="0", time=f"{seconds or 0:.3f}")
    props = ET.SubElement(suite, "properties")
    for key, value in (("decision", scorecard["decision"]), ("candidate_version", candidate),
                       ("champion_version", champion or ""), ("machine", scorecard.get("machine", "")),
                       ("confidence", str(scorecard.get("confidence", "")))):
        ET.SubElement(props, "property", name=key, value=str(value))
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"plaster.gate.{pipeline}", name=v["rule"], time="0")
        if v in failed:
            kind = "FAIL" if v["verdict"] == "FAIL" else "NOT_MEASURED (required)"
            ET.SubElement(case, "failure", message=v["reason"], type=kind).text = f"{v['rule']}: {v['reason']}"
        elif v in skipped:
            ET.SubElement(case, "skipped", message=v["reason"])
        else:
            ET.SubElement(case, "system-out").text = v["reason"]
    ET.indent(suites)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
    return path
