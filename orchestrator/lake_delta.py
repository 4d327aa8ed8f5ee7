"""Delta Lake tables through `deltalake` (delta-rs): versions, the files each commit added and
removed, and whole-file reads.

The live files at a version come from deltalake's snapshot (checkpoints included). What each
commit after `since` did comes from its JSON commit file (`_delta_log/<version>.json`: add and
remove actions with dataChange, stats and deletionVector, which deltalake's API does not show per
commit). Those are read with pyarrow's filesystem, the one data files are read with: deltalake's
own storage handler holds the GIL while it waits on the network (it hung against an S3 server
running in the same process).
"""

from __future__ import annotations

import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from orchestrator.errors import DataError
from orchestrator.lake import Changes, Table, TableFile, address, filesystem, fs_path, local_path, scrub

# Commits whose data change adds new rows; any other data-changing commit (UPDATE, MERGE,
# RESTORE, ...) rewrites rows the model has seen and is noted rather than learned again.
_WRITES = ("WRITE", "CREATE TABLE", "CREATE OR REPLACE TABLE", "CREATE TABLE AS SELECT", "REPLACE TABLE AS SELECT",
           "CREATE OR REPLACE TABLE AS SELECT", "STREAMING UPDATE", "CONVERT")
_LOG_FIX = ("raise delta.logRetentionDuration (and keep delta.deletedFileRetentionDuration at least as long) on the "
            "table, or re-learn from the current version")
_FILES_FIX = ("raise delta.deletedFileRetentionDuration (VACUUM keeps removed files that long) on the table, or "
              "re-learn from the current version")


class DeltaSource(Table):
    format = "delta"

    def __init__(self, source: str, storage_options: dict | None = None):
        remote = "://" in source and not source.startswith("file://")
        self.uri = source.rstrip("/") if remote else str(local_path(source))
        self.options = None if storage_options is None else {str(k): str(v) for k, v in storage_options.items()}
        self.address = address(source)
        self._filesystem = None
        self._schema = None

    # -- deltalake ---------------------------------------------------------------------------

    def _open(self, version: int | None = None):
        from deltalake import DeltaTable

        try:
            return DeltaTable(self.uri, version=version, storage_options=self.options)
        except Exception as e:
            why = scrub(str(e), self.options)
            if version is None:
                raise DataError(f"delta table {self.address} cannot be opened, or is not a Delta table ({why}): check "
                                "data.source and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_ENDPOINT_URL)"
                                ) from None
            latest = self.current()
            if version > latest:
                raise DataError(f"delta table {self.address}: version {version} is ahead of the current version "
                                f"{latest} (was the table re-created?): re-learn from the current version") from None
            raise DataError(f"delta table {self.address}: version {version} can no longer be read, its log was "
                            f"cleaned up ({why}): {_LOG_FIX}") from None

    def _fs(self):
        if self._filesystem is None:
            self._filesystem = filesystem(self.uri, self.options)[0]
        return self._filesystem

    def _commit(self, version: int) -> list[dict] | None:
        """The actions of one commit file, or None when the log no longer has it."""
        try:
            with self._fs().open_input_stream(f"{fs_path(self.uri)}/_delta_log/{version:020d}.json") as f:
                return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
        except FileNotFoundError:
            return None
        except OSError as e:
            raise DataError(f"delta table {self.address}: commit {version} cannot be read "
                            f"({scrub(str(e), self.options)}): check the credentials and the network") from None

    def _commits(self, versions: list[int]) -> dict[int, list[dict] | None]:
        # Commit files are small and many: fetch a batch at once (one round trip each on S3).
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(versions)))) as pool:
            return dict(zip(versions, pool.map(self._commit, versions)))

    def _file(self, path: str, rows: int | None, size: int, partition: dict, added_in: int) -> TableFile:
        rel = urllib.parse.unquote(path)  # the log holds URI-encoded paths relative to the table
        uri = rel.removeprefix("file://") if "://" in rel else f"{self.uri}/{rel}"
        if rows is None:  # a writer without statistics: the Parquet footer has the count
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(self._fs().open_input_file(fs_path(uri))).metadata.num_rows
        part = {k: None if v is None else str(v) for k, v in (partition or {}).items()}
        return TableFile(uri=uri, rows=int(rows), size=int(size), partition=part, added_in=added_in)

    def _live(self, dt, check: bool = True) -> dict[str, tuple]:
        """path -> (rows, size, partition) of the files live in this snapshot of the table."""
        import pyarrow as pa

        mode = dt.metadata().configuration.get("delta.columnMapping.mode", "none")
        if check and mode != "none":
            raise DataError(f"delta table {self.address} (version {dt.version()}) uses column mapping ({mode}): plaster "
                            "reads data files by column name; rewrite the table without delta.columnMapping.mode")
        if check and "deletionVectors" in (dt.protocol().reader_features or []) and len(pa.table(dt.deletion_vectors())):
            raise self._dv_error(dt.version())
        rows = pa.table(dt.get_add_actions(flatten=False)).to_pylist()
        return {r["path"]: (r["num_records"], r["size_bytes"], r.get("partition") or {}) for r in rows}

    def _dv_error(self, version: int) -> DataError:
        return DataError(f"delta table {self.address} (version {version}) has deletion vectors: plaster reads whole "
                         "data files and would learn deleted rows. Set delta.enableDeletionVectors=false on the table "
                         "and rewrite its files (REORG TABLE ... APPLY (PURGE)), then re-learn from the current version")

    def _added_in(self, paths: set[str], before: int) -> dict[str, int]:
        """Which commit at or before `before` added each path, reading the log backwards. A file whose
        commit was cleaned from the log gets the oldest version still there (it was added at or before)."""
        found: dict[str, int] = {}
        v, oldest = before, before
        while paths - found.keys() and v >= 0:
            batch = list(range(v, max(-1, v - 32), -1))
            commits = self._commits(batch)
            for k in batch:
                if commits[k] is None:
                    v = -1
                    break
                oldest = k
                for a in commits[k]:
                    if "add" in a and a["add"]["path"] in paths:
                        found.setdefault(a["add"]["path"], k)
            else:
                v -= 32
        return {p: found.get(p, oldest) for p in paths}

    # -- the interface ---------------------------------------------------------------------

    def current(self) -> int:
        return self._open().version()

    def schema(self):
        import pyarrow as pa

        self._schema = pa.schema(self._open().schema().to_arrow())
        return self._schema

    def files_at(self, version: int) -> tuple[TableFile, ...]:
        live = self._live(self._open(version))
        when = self._added_in(set(live), version)
        files = tuple(self._file(p, *live[p], when[p]) for p in sorted(live))
        gone = [f for f, info in zip(files, self._fs().get_file_info([fs_path(f.uri) for f in files])) if info.type == 0]
        if gone:
            raise DataError(f"delta table {self.address}: {len(gone)} of the {len(files)} files of version {version} "
                            f"were vacuumed (e.g. {gone[0].uri}): {_FILES_FIX}")
        return files

    def changes(self, since: int | None) -> Changes:
        dt = self._open()
        version, self._schema = dt.version(), None
        live = self._live(dt)
        if since is None:
            when = self._added_in(set(live), version)
            added = tuple(self._file(p, *live[p], when[p]) for p in sorted(live))
            return Changes("delta", self.address, version, None, added, (), 0, 0, ())
        if since > version:
            self._open(since)  # raises: ahead of the table
        # Row counts of the files live at `since`, for what later commits remove (remove actions carry none).
        rows_of = {p: r[0] or 0 for p, r in self._live(self._open(since), check=False).items()}
        commits = self._commits(list(range(since + 1, version + 1)))
        fresh: set[str] = set()          # files holding rows added after `since`
        added_at: dict[str, int] = {}    # every file added after `since` -> its version
        deleted = rewritten = 0
        notes: list[str] = []
        for v in range(since + 1, version + 1):
            actions = commits[v]
            if actions is None:
                raise DataError(f"delta table {self.address}: commit {v} (after version {since}) is gone from the "
                                f"log: {_LOG_FIX}")
            info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
            op = info.get("operation", "UNKNOWN")
            adds = [a["add"] for a in actions if "add" in a]
            removes = [a["remove"] for a in actions if "remove" in a]
            if not adds and not removes:
                continue  # metadata only: properties, schema, protocol
            if any(a.get("deletionVector") for a in adds):
                raise self._dv_error(v)
            for a in adds:
                rows_of[a["path"]] = json.loads(a.get("stats") or "{}").get("numRecords") or 0
                added_at[a["path"]] = v
            removed_rows = sum(rows_of.get(r["path"], 0) for r in removes)
            added_rows = sum(rows_of[a["path"]] for a in adds)
            # Rows added after `since` and rewritten by this commit were never learned: the files
            # holding them now stay new, with whatever older rows they were merged with.
            carried = [r["path"] for r in removes if r["path"] in fresh]
            for r in removes:
                fresh.discard(r["path"])
            data_change = any(x.get("dataChange", True) for x in adds + removes)
            if data_change and (op in _WRITES or not removes):  # a commit that only adds rows adds new ones
                fresh.update(a["path"] for a in adds)
                if op not in _WRITES:
                    notes.append(f"version {v}: {op} only added rows ({added_rows}): learned as new")
                if removes:
                    deleted += removed_rows
                    notes.append(f"version {v}: {op} ({info.get('operationParameters', {}).get('mode', 'overwrite')}) "
                                 f"replaced {removed_rows} rows with {added_rows} new ones")
                continue
            if not data_change:
                rewritten += len(adds)
                notes.append(f"version {v}: {op} rewrote {len(removes)} files into {len(adds)} (no new rows)")
            elif op == "DELETE":
                deleted += removed_rows - added_rows
                notes.append(f"version {v}: DELETE removed {removed_rows - added_rows} rows")
            else:
                deleted += max(0, removed_rows - added_rows)
                notes.append(f"version {v}: {op} rewrote {removed_rows} rows into {added_rows}: changed or inserted "
                             "rows are not learned again")
            if carried:
                fresh.update(a["path"] for a in adds)
                notes.append(f"version {v}: {op} rewrote {len(carried)} files added after version {since}: the files "
                             "holding their rows count as new (older rows merged into them are learned again)")
        # A file live at `since` was added at or before it: which version exactly would cost a read
        # of the whole log back to version 0 every cycle, for files only replay uses.
        when = {**{p: since for p in live if p not in added_at}, **added_at}
        files = {p: self._file(p, *live[p], when[p]) for p in sorted(live)}
        return Changes("delta", self.address, version, since,
                       added=tuple(f for p, f in files.items() if p in fresh),
                       old=tuple(f for p, f in files.items() if p not in fresh),
                       deleted_rows=deleted, rewritten_files=rewritten, notes=tuple(notes))

    def read(self, f: TableFile, columns: list[str] | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self._schema or self.schema()  # read per file: the log is loaded once per changes()
        wanted = list(columns) if columns is not None else schema.names
        in_file = [c for c in wanted if c not in f.partition]
        try:
            table = pq.read_table(fs_path(f.uri), filesystem=self._fs(), columns=in_file)
        except FileNotFoundError:
            raise DataError(f"delta table {self.address}: file {f.uri} (added in version {f.added_in}) was vacuumed: "
                            f"{_FILES_FIX}") from None
        out = {}
        for name in wanted:
            if name in f.partition:
                # Delta keeps partition values in the log only: put them back, typed as the table says.
                kind = schema.field(name).type if name in schema.names else pa.string()
                out[name] = pa.array([f.partition[name]] * table.num_rows, pa.string()).cast(kind)
            else:
                out[name] = table.column(name)
        return pa.table(out) if out else table
