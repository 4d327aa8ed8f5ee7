"""Apache Iceberg tables through `pyiceberg`: snapshots, the data files each one added and
removed (its own manifest entries), and whole-file reads.

A version is a snapshot id. The live files of a snapshot carry the id of the snapshot that added
them in their manifest entries, so `added_in` costs nothing extra here.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator import secrets
from orchestrator.errors import DataError
from orchestrator.lake import Changes, Table, TableFile, local_path

_EXPIRY_FIX = ("keep snapshots longer (history.expire.max-snapshot-age-ms / history.expire.min-snapshots-to-keep on "
               "the table, or an older cut-off in expire_snapshots), or re-learn from the current snapshot")


def catalog_props(home: Path, catalog: dict | None = None) -> dict:
    """data.catalog's properties; none given: the embedded SQL catalog on SQLite under PLASTER_HOME."""
    props = dict(catalog or {})
    if not props:
        root = Path(home) / "iceberg"
        (root / "warehouse").mkdir(parents=True, exist_ok=True)
        props = {"type": "sql", "uri": f"sqlite:///{root}/catalog.db", "warehouse": f"file://{root}/warehouse"}
    return props


def load(home: Path, catalog: dict | None = None):
    """The pyiceberg catalog data.catalog names (what a producer writes to, and ingest reads)."""
    from pyiceberg.catalog import load_catalog

    props = catalog_props(home, catalog)
    name = str(props.pop("name", "plaster"))
    return load_catalog(name, **{k: str(v) for k, v in props.items()})


class IcebergSource(Table):
    format = "iceberg"

    def __init__(self, identifier: str, home: Path, catalog: dict | None = None):
        props = catalog_props(home, catalog)
        name = str(props.pop("name", "plaster"))
        self.identifier = identifier
        self.address = f"{name}/{identifier}"
        try:
            self.catalog = load(home, catalog)
            self._tbl = self.catalog.load_table(identifier)
        except Exception as e:
            why = self._scrub(str(e), props)
            raise DataError(f"iceberg table {self.address} cannot be opened ({type(e).__name__}: {why}): check data.source "
                            "(namespace.table) and the catalog properties (uri, warehouse, s3.*)") from None
        self._datafiles: dict[str, object] = {}  # uri -> pyiceberg DataFile, for read()

    @staticmethod
    def _scrub(text: str, props: dict) -> str:
        for k, v in props.items():
            if v and any(w in k.lower() for w in ("secret", "password", "token", "credential")):
                text = text.replace(str(v), secrets.MASK)
        return secrets.mask(" ".join(text.split()))

    def _refresh(self):
        self._tbl = self._tbl.refresh()
        return self._tbl

    def _file(self, tbl, data_file, added_in: int) -> TableFile:
        spec = tbl.specs()[data_file.spec_id]
        schema = tbl.schema()
        part = {}
        for i, pf in enumerate(spec.fields):
            value = data_file.partition[i]
            part[pf.name] = None if value is None else pf.transform.to_human_string(schema.find_type(pf.source_id), value)
        path = data_file.file_path
        uri = str(local_path(path)) if path.startswith("file:") or "://" not in path else path
        self._datafiles[uri] = data_file
        return TableFile(uri=uri, rows=data_file.record_count, size=data_file.file_size_in_bytes, partition=part,
                         added_in=added_in)

    def _refuse_deletes(self, data_file, snapshot_id: int) -> None:
        from pyiceberg.manifest import DataFileContent

        if data_file.content != DataFileContent.DATA:
            raise DataError(f"iceberg table {self.address} (snapshot {snapshot_id}) has {data_file.content.name.lower()} "
                            "files (merge-on-read): plaster reads whole data files and would learn deleted rows. Set "
                            "write.delete.mode, write.update.mode and write.merge.mode to copy-on-write and rewrite the "
                            "data files (rewrite_data_files), then re-learn from the current snapshot")

    def _live(self, tbl, snapshot) -> dict[str, TableFile]:
        files = {}
        for manifest in snapshot.manifests(tbl.io):
            for entry in manifest.fetch_manifest_entry(tbl.io, discard_deleted=True):
                self._refuse_deletes(entry.data_file, snapshot.snapshot_id)
                f = self._file(tbl, entry.data_file, entry.snapshot_id)
                files[f.uri] = f
        return dict(sorted(files.items()))

    def _own_entries(self, tbl, snapshot) -> tuple[list, list]:
        """(data files added, data files removed) by this snapshot: its own manifests' entries."""
        from pyiceberg.manifest import ManifestEntryStatus

        added, removed = [], []
        for manifest in snapshot.manifests(tbl.io):
            if manifest.added_snapshot_id != snapshot.snapshot_id:
                continue
            for entry in manifest.fetch_manifest_entry(tbl.io, discard_deleted=False):
                if entry.snapshot_id != snapshot.snapshot_id:
                    continue  # EXISTING entries carried into a rewritten manifest
                self._refuse_deletes(entry.data_file, snapshot.snapshot_id)
                if entry.status == ManifestEntryStatus.ADDED:
                    added.append(self._file(tbl, entry.data_file, snapshot.snapshot_id))
                elif entry.status == ManifestEntryStatus.DELETED:
                    removed.append(self._file(tbl, entry.data_file, snapshot.snapshot_id))
        return added, removed

    def _expired(self, snapshot_id: int, current: int, what: str = "") -> DataError:
        return DataError(f"iceberg table {self.address}: snapshot {snapshot_id}{what} was expired (current snapshot "
                         f"{current}): {_EXPIRY_FIX}")

    def _current(self, tbl):
        snap = tbl.current_snapshot()
        if snap is None:
            raise DataError(f"iceberg table {self.address} has no snapshot yet: append data to it first")
        return snap

    # -- the interface ---------------------------------------------------------------------

    def current(self) -> int:
        return self._current(self._refresh()).snapshot_id

    def schema(self):
        return self._refresh().schema().as_arrow()

    def files_at(self, version: int) -> tuple[TableFile, ...]:
        tbl = self._refresh()
        snap = tbl.snapshot_by_id(version)
        if snap is None:
            raise self._expired(version, self._current(tbl).snapshot_id)
        files = tuple(self._live(tbl, snap).values())
        gone = [f for f in files if not tbl.io.new_input(f.uri).exists()]
        if gone:
            raise DataError(f"iceberg table {self.address}: {len(gone)} of the {len(files)} files of snapshot {version} "
                            f"were deleted by snapshot expiry (e.g. {gone[0].uri}): {_EXPIRY_FIX}")
        return files

    def changes(self, since: int | None) -> Changes:
        tbl = self._refresh()
        cur = self._current(tbl)
        live = self._live(tbl, cur)
        if since is None:
            return Changes("iceberg", self.address, cur.snapshot_id, None, tuple(live.values()), (), 0, 0, ())
        if tbl.snapshot_by_id(since) is None:
            raise self._expired(since, cur.snapshot_id)
        chain, snap = [], cur
        while snap.snapshot_id != since:  # the current snapshot's ancestry back to `since`
            chain.append(snap)
            if snap.parent_snapshot_id is None:
                raise DataError(f"iceberg table {self.address}: snapshot {since} is not an ancestor of the current "
                                f"snapshot {cur.snapshot_id} (rolled back, or another branch): re-learn from the "
                                "current snapshot")
            parent = tbl.snapshot_by_id(snap.parent_snapshot_id)
            if parent is None:
                raise self._expired(snap.parent_snapshot_id, cur.snapshot_id, f" (between {since} and the current one)")
            snap = parent
        fresh: set[str] = set()
        deleted = rewritten = 0
        notes: list[str] = []
        for snap in reversed(chain):
            sid, op = snap.snapshot_id, snap.summary.operation.value if snap.summary else "append"
            added, removed = self._own_entries(tbl, snap)
            carried = [f for f in removed if f.uri in fresh]
            fresh.difference_update(f.uri for f in removed)
            recorded = snap.summary["deleted-records"] if snap.summary else None
            gone_rows = int(recorded) if recorded is not None else sum(f.rows for f in removed)
            new_rows = sum(f.rows for f in added)
            if op == "append":
                fresh.update(f.uri for f in added)
            elif op == "replace":
                rewritten += len(added)
                notes.append(f"snapshot {sid}: replace rewrote {len(removed)} files into {len(added)} (no new rows)")
            elif op == "overwrite":
                fresh.update(f.uri for f in added)
                deleted += gone_rows
                notes.append(f"snapshot {sid}: overwrite removed {gone_rows} rows and added {new_rows}, learned as new "
                             "(a copy-on-write delete or update commits an overwrite too: its kept rows are learned again)")
            else:  # delete
                deleted += gone_rows
                notes.append(f"snapshot {sid}: {op} removed {gone_rows} rows")
            if carried and op not in ("append", "overwrite"):
                fresh.update(f.uri for f in added)
                notes.append(f"snapshot {sid}: {op} rewrote {len(carried)} files added after snapshot {since}: the files "
                             "holding their rows count as new (older rows merged into them are learned again)")
        return Changes("iceberg", self.address, cur.snapshot_id, since,
                       added=tuple(f for u, f in live.items() if u in fresh),
                       old=tuple(f for u, f in live.items() if u not in fresh),
                       deleted_rows=deleted, rewritten_files=rewritten, notes=tuple(notes))

    def read(self, f: TableFile, columns: list[str] | None = None):
        from pyiceberg.expressions import AlwaysTrue
        from pyiceberg.io.pyarrow import ArrowScan
        from pyiceberg.table import FileScanTask

        tbl = self._tbl
        data_file = self._datafiles.get(f.uri)
        if data_file is None:  # a TableFile from another process: find it among the current files
            self._live(self._refresh(), self._current(self._tbl))
            tbl, data_file = self._tbl, self._datafiles.get(f.uri)
        if data_file is None:
            raise DataError(f"iceberg table {self.address}: {f.uri} (snapshot {f.added_in}) is not a live file of the "
                            "current snapshot: take files from changes() or files_at()")
        schema = tbl.schema() if columns is None else tbl.schema().select(*columns)
        try:
            # pyiceberg maps columns by field id (renames, added columns) and fills identity partitions.
            table = ArrowScan(tbl.metadata, tbl.io, schema, AlwaysTrue()).to_table([FileScanTask(data_file)])
        except FileNotFoundError:
            raise DataError(f"iceberg table {self.address}: file {f.uri} (added in snapshot {f.added_in}) was deleted "
                            f"by snapshot expiry: {_EXPIRY_FIX}") from None
        return table if columns is None else table.select(list(columns))
