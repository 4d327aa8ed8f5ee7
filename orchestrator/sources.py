"""Where new shards come from: a folder, or a bucket (`s3://bucket/prefix`, `gs://...`, with
pyarrow's query options such as `?endpoint_override=...`) mirrored into PLASTER_HOME.

A bucket is listed (names, sizes, modification times: no object is read) and each Parquet
object not mirrored yet is downloaded once into `<home>/sources/<pipeline>/`, keeping its
modification time as its arrival time; ingest then works on that folder as on any other, so
lineage is by content hash as before. A shard ingest quarantines is moved in the bucket too,
to `_quarantine/` with its reason beside it: never deleted. The scheduler's poll reads only
listings and, for objects not mirrored yet, their Parquet footers.

Credentials come from the environment the way pyarrow reads them (AWS_ACCESS_KEY_ID, ...),
or from the URI; messages never show them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator import secrets
from orchestrator.errors import DataError

QUARANTINE = "_quarantine"
_BUCKETS = ("s3://", "gs://", "gcs://")


def is_bucket(uri: str) -> bool:
    return uri.startswith(_BUCKETS)


def mirror_folder(home: Path, pipeline_name: str) -> Path:
    return home / "sources" / pipeline_name


class Bucket:
    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self.uri = uri
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        except Exception as e:
            raise DataError(f"data.source {self.describe()} cannot be opened ({secrets.mask(str(e))}): check the URI "
                            "and the credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/"
                            "AWS_ENDPOINT_URL for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS)") from None
        self.root = self.root.rstrip("/")

    def describe(self) -> str:
        """The source's address for messages: no query options, no credentials."""
        scheme, rest = self.uri.split("?", 1)[0].split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[-1]}"

    def object_uri(self, name: str) -> str:
        """A shard's own URI, with the source's query options (endpoint, region): what Ray Data
        tasks on any node open. Built when needed, never stored (it may carry credentials)."""
        base, _, query = self.uri.partition("?")
        return f"{base.rstrip('/')}/{name}" + (f"?{query}" if query else "")

    def shards(self) -> list:
        """The Parquet objects directly under the prefix (FileInfo: path, size, mtime_ns)."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False, allow_not_found=True))
        except Exception as e:
            raise DataError(f"data.source {self.describe()} cannot be listed ({secrets.mask(str(e))}): check the "
                            "bucket name and the credentials") from None
        return sorted((i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")),
                      key=lambda i: i.base_name)

    def mirror(self, folder: Path) -> Path:
        """Download each object not mirrored yet (or changed), keeping its modification time;
        drop mirrored shards whose object is gone (moved or deleted in the bucket)."""
        folder.mkdir(parents=True, exist_ok=True)
        listed = self.shards()
        for info in listed:
            local = folder / info.base_name
            if local.is_file() and local.stat().st_size == info.size and local.stat().st_mtime_ns == info.mtime_ns:
                continue
            tmp = local.with_suffix(".part")
            with self.fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            os.utime(tmp, ns=(info.mtime_ns, info.mtime_ns))
            tmp.replace(local)  # a shard appears whole or not at all, as in a folder source
        names = {i.base_name for i in listed}
        for stale in folder.glob("*.parquet"):
            if stale.name not in names and stale.is_file():
                stale.unlink()  # only the mirror's copy: the object itself was moved or deleted in the bucket
        return folder

    def upload(self, local: Path) -> str:
        """Put a local shard into the bucket under its name (what a producer does)."""
        dst = f"{self.root}/{local.name}"
        with open(local, "rb") as src, self.fs.open_output_stream(dst) as f:
            while block := src.read(1 << 20):
                f.write(block)
        return dst

    def quarantine(self, name: str, reason: dict) -> str:
        """Move the object to `_quarantine/` with `<name>.reason.json` beside it. The reason
        first: a failure between the steps leaves the object in place, quarantined again
        next cycle, never a quarantined object without its reason."""
        src, dst = f"{self.root}/{name}", f"{self.root}/{QUARANTINE}/{name}"
        if self.fs.get_file_info(dst).type != 0:  # keep both, as in a folder source
            stem = name.removesuffix(".parquet")
            dst = f"{self.root}/{QUARANTINE}/{stem}-{reason.get('sha256', '')[:12]}.parquet"
        with self.fs.open_output_stream(dst + ".reason.json") as f:
            f.write(json.dumps(reason, indent=2).encode())
        self.fs.copy_file(src, dst)
        self.fs.delete_file(src)
        return dst

    def pending(self, folder: Path, learned: set[str], hash_of) -> tuple[int, float | None]:
        """New rows waiting in the bucket and the oldest unlearned arrival: a mirrored object
        is recognised by its hash (`hash_of(local path)`), any other counts its footer's rows."""
        import pyarrow.parquet as pq

        rows, oldest, seen = 0, None, set()
        for info in self.shards():
            local = folder / info.base_name
            if local.is_file() and local.stat().st_size == info.size and local.stat().st_mtime_ns == info.mtime_ns:
                sha = hash_of(local)
                if sha in learned or sha in seen:
                    continue
                seen.add(sha)
            try:
                with self.fs.open_input_file(info.path) as f:
                    rows += pq.ParquetFile(f).metadata.num_rows  # the footer only: ranged reads
            except Exception:
                pass  # unreadable: ingest will quarantine it; it still ages
            t = info.mtime_ns / 1e9
            oldest = t if oldest is None else min(oldest, t)
        return rows, oldest
