"""The tabular stream landed in an Apache Iceberg table, one day per append (one snapshot per
day), partitioned by day, in the catalog plaster reads (data.catalog; by default the SQL catalog
on SQLite under PLASTER_HOME). The days are the lake pipeline's (pipelines/lake/simulate.py).
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import load_module

_lake = load_module(Path(__file__).resolve().parents[1] / "lake" / "simulate.py")


def simulate(source: str, golden: Path | None, shards: int, shuffle_labels: bool = False,
             catalog: dict | None = None) -> list[str]:
    """Append the next `shards` days to the Iceberg table `source` (namespace.table), creating
    it (partitioned by day) on the first call; return one line per snapshot."""
    from orchestrator.lake_iceberg import load
    from orchestrator.workspace import Workspace

    _lake.write_golden(golden)
    cat = load(Workspace.from_env().home, catalog)
    namespace = source.rsplit(".", 1)[0]
    cat.create_namespace_if_not_exists(namespace)
    if not cat.table_exists(source):
        table = cat.create_table(source, schema=_lake.day_rows(0).schema)
        with table.update_spec() as spec:
            spec.add_identity("day")
    table = cat.load_table(source)
    start = sum(1 for s in table.snapshots() if s.summary and s.summary.operation.value == "append")
    written = []
    for k in range(start, start + shards):
        rows = _lake.day_rows(k, shuffle_labels)
        table.append(rows)
        written.append(f"{source} snapshot {table.current_snapshot().snapshot_id} (day {rows.column('day')[0]})")
    return written
