"""Lake tables as a data source (read side): Delta Lake and Apache Iceberg.

In a folder source "new data" is new Parquet files. In a lake table it is the rows that table
versions (Delta) or snapshots (Iceberg) after the champion's one added: `Table.changes(since)`
walks those commits and sorts the live files into `added` (new rows, to learn) and `old` (rows
that were there at `since`, for replay), with what deletes, overwrites and compactions did.

plaster reads whole data files (`Table.read`), so merge-on-read tables (Delta deletion vectors,
Iceberg delete files) are refused with the setting that turns them off. Time travel needs the
table's history: a version whose log or files the table's retention removed is refused with the
retention setting to raise, or the advice to re-learn from the current version.

Delta reading lives in lake_delta.py, Iceberg in lake_iceberg.py; this module holds what the
ingest stage imports and what both share (addresses without credentials, pyarrow filesystems).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import secrets
from orchestrator.errors import DataError

FORMATS = ("parquet", "delta", "iceberg")

# The S3 settings deltalake reads from the environment when given no storage options.
_S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
            "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP")


@dataclass(frozen=True)
class TableFile:
    uri: str                 # what pyarrow can open: absolute local path or full s3://bucket/key
    rows: int                # from the log / manifest (no file read)
    size: int
    partition: dict[str, str | None] = field(hash=False)  # values as the log writes them; None for a null partition
    added_in: int            # the version / snapshot id that added it (Delta: at or before, once its commit left the log)


@dataclass(frozen=True)
class Changes:
    format: str
    table: str               # the table's address (no credentials)
    version: int             # Delta version / Iceberg snapshot id read at (the current one)
    since: int | None
    added: tuple[TableFile, ...]   # files holding new rows
    old: tuple[TableFile, ...]     # live files whose rows were there at `since` (rewritten ones included)
    deleted_rows: int
    rewritten_files: int
    notes: tuple[str, ...]

    @property
    def added_rows(self) -> int:
        return sum(f.rows for f in self.added)


class Table(ABC):
    """One lake table. `changes` is what a cycle learns; `files_at` and `read` serve replay."""

    format: str
    address: str

    @abstractmethod
    def current(self) -> int: ...

    @abstractmethod
    def changes(self, since: int | None) -> Changes:
        """The commits after `since` up to the current version. Appends (and overwrites, CREATE) add new
        rows; compactions and deletes add none, but a file rewritten from rows added after `since` stays
        new. since=None: every live file is new."""

    @abstractmethod
    def files_at(self, version: int) -> tuple[TableFile, ...]:
        """Time travel: the files live at `version`, refused once the log or the files are gone."""

    @abstractmethod
    def read(self, f: TableFile, columns: list[str] | None = None):
        """That file's rows as a pyarrow.Table, partition columns included."""

    @abstractmethod
    def schema(self):
        """The current pyarrow.Schema, partition columns included."""


def open_table(fmt: str, source: str, *, home: Path, catalog: dict | None = None,
               storage_options: dict | None = None) -> Table:
    """The table `source` names: a Delta folder or URI, or an Iceberg `namespace.table`."""
    if fmt == "delta":
        from orchestrator.lake_delta import DeltaSource

        return DeltaSource(source, storage_options)
    if fmt == "iceberg":
        from orchestrator.lake_iceberg import IcebergSource

        return IcebergSource(source, Path(home), catalog)
    raise DataError(f"data.format {fmt!r} is not a lake table format: use one of {', '.join(FORMATS[1:])} "
                    "(plain Parquet folders are read by ingest directly)")


def detect(source: str, storage_options: dict | None = None) -> str:
    """'delta' when `<source>/_delta_log` exists, else 'parquet' (an Iceberg table is named, not found)."""
    import pyarrow.fs as pafs

    if "://" not in source or source.startswith("file://"):
        return "delta" if (local_path(source) / "_delta_log").is_dir() else "parquet"
    try:
        fs, root = filesystem(source, storage_options)
        kind = fs.get_file_info(f"{root.rstrip('/')}/_delta_log").type
    except Exception as e:
        raise DataError(f"data.source {address(source)} cannot be listed ({scrub(str(e), storage_options)}): check "
                        "the URI and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_ENDPOINT_URL)") from None
    return "delta" if kind == pafs.FileType.Directory else "parquet"


def local_path(source: str) -> Path:
    return Path(source.removeprefix("file://")).expanduser().resolve()


def address(source: str) -> str:
    """A source for messages and lineage: no userinfo, no query options (they may hold keys)."""
    if "://" not in source or source.startswith("file://"):
        return str(local_path(source))
    scheme, rest = source.split("?", 1)[0].split("://", 1)
    return f"{scheme}://{rest.split('@', 1)[-1]}".rstrip("/")


def s3_options(storage_options: dict | None) -> dict[str, str]:
    """The S3 settings in force, upper-cased: the given options, else the environment's (as deltalake does)."""
    given = storage_options if storage_options is not None else {k: os.environ[k] for k in _S3_KEYS if k in os.environ}
    return {str(k).upper(): str(v) for k, v in given.items() if v is not None}


def filesystem(uri: str, storage_options: dict | None = None):
    """(pyarrow filesystem, path inside it) for a data file or table URI."""
    import pyarrow.fs as pafs

    if "://" not in uri or uri.startswith("file://"):
        return pafs.LocalFileSystem(), str(local_path(uri))
    if uri.startswith(("s3://", "s3a://")) and "?" not in uri:
        o = s3_options(storage_options)
        endpoint = o.get("AWS_ENDPOINT_URL") or o.get("AWS_ENDPOINT") or ""
        http = endpoint.startswith("http://") or o.get("AWS_ALLOW_HTTP", "").lower() == "true"
        fs = pafs.S3FileSystem(
            access_key=o.get("AWS_ACCESS_KEY_ID"), secret_key=o.get("AWS_SECRET_ACCESS_KEY"),
            session_token=o.get("AWS_SESSION_TOKEN"), region=o.get("AWS_REGION") or o.get("AWS_DEFAULT_REGION"),
            endpoint_override=endpoint.split("://", 1)[-1] or None, scheme="http" if http else "https")
        return fs, uri.split("://", 1)[1]
    return pafs.FileSystem.from_uri(uri)  # gs://, abfs://, or an s3 URI with pyarrow's own query options


def fs_path(uri: str) -> str:
    """A file URI's path inside the filesystem `filesystem()` opens for it (query options,
    such as a bucket source's `?endpoint_override=`, belong to the filesystem, not the path)."""
    if "://" not in uri or uri.startswith("file://"):
        return str(local_path(uri))
    return uri.partition("?")[0].split("://", 1)[1]


def scrub(text: str, options: dict | None) -> str:
    """Mask option values that are secrets (a key passed in storage_options is not in the environment)."""
    for k, v in (options or {}).items():
        if v and len(str(v)) >= secrets.MIN_SECRET_LEN and secrets._secret_env_name(str(k).upper()):
            text = text.replace(str(v), secrets.MASK)
    return secrets.mask(" ".join(text.split()))  # one line: some library messages span several
