"""The tabular stream (pipelines/tabular/simulate.py) landed in a Delta Lake table, one day per
append, partitioned by day: each `plaster simulate pipelines/lake --shards N` call appends N
days, each its own table version, as a daily job writing to a lake would. The golden holdout
stays a Parquet file (it is fixed, not a table).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from orchestrator.config import load_module
from orchestrator.dataset import write_columns

_tabular = load_module(Path(__file__).resolve().parents[1] / "tabular" / "simulate.py")
ROWS_PER_DAY = _tabular.ROWS_PER_SHARD
FIRST_DAY = dt.date(2026, 12, 1)


def day_rows(k: int, shuffle_labels: bool = False) -> pa.Table:
    """Day k of the stream: the tabular stream's shard k with its day as a column."""
    rows = _tabular._rows(k, ROWS_PER_DAY, np.random.default_rng(k), shuffle_labels)
    table = pa.table(rows)
    return table.append_column("day", pa.array([(FIRST_DAY + dt.timedelta(days=k)).isoformat()] * ROWS_PER_DAY))


def write_golden(golden: Path | None) -> None:
    """The tabular stream's golden holdout (its first day's population and rule), written once."""
    if golden is not None and not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        write_columns(golden, _tabular._rows(0, _tabular.GOLDEN_ROWS, np.random.default_rng(10_000), False))


def simulate(source: str | Path, golden: Path | None, shards: int, shuffle_labels: bool = False,
             storage_options: dict | None = None) -> list[str]:
    """Append the next `shards` days to the Delta table at `source`; return one line per version."""
    from deltalake import DeltaTable, write_deltalake

    write_golden(golden)
    uri = str(source)
    try:
        start = len(DeltaTable(uri, storage_options=storage_options).to_pyarrow_table(columns=["day"])
                    .column("day").unique())
    except Exception:  # no table yet: the first append creates it
        Path(uri).mkdir(parents=True, exist_ok=True) if "://" not in uri else None
        start = 0
    written = []
    for k in range(start, start + shards):
        write_deltalake(uri, day_rows(k, shuffle_labels), mode="append", partition_by=["day"],
                        storage_options=storage_options)
        version = DeltaTable(uri, storage_options=storage_options).version()
        written.append(f"{uri} version {version} (day {(FIRST_DAY + dt.timedelta(days=k)).isoformat()})")
    return written
