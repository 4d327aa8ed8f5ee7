"""Where new shards come from: a folder, or a bucket (`s3://bucket/prefix`, `gs://...`, with
pyarrow's query options such as `?endpoint_override=...`) mirrored into PLASTER_HOME.

A bucket is listed recursively (names, sizes, modification times: no object is read), with
the folder rules of listing.py (writer debris such as `_SUCCESS`, `_temporary/` and `.crc`
is left out; Hive `key=value` prefixes are kept), and each data object not mirrored yet is
downloaded once into `<home>/sources/<pipeline>/<its key below the prefix>`, keeping its
modification time as its arrival time; ingest then works on that folder as on any other, so
lineage is by content hash as before. A shard ingest quarantines is moved in the bucket too,
to `_quarantine/<its key>` with its reason beside it: never deleted. The scheduler's poll
reads only listings and, for objects not mirrored yet, their Parquet footers.

Credentials come from the environment the way pyarrow reads them (AWS_ACCESS_KEY_ID, ...),
or from the URI; messages never show them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator import listing, secrets
from orchestrator.errors import DataError

QUARANTINE = listing.QUARANTINE
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

    def key(self, info) -> str:
        """An object's key below the prefix: its shard name, and its path in the mirror."""
        return info.path[len(self.root) + 1:]

    def listing(self) -> tuple[list, list[tuple[str, str]]]:
        """(data objects under the prefix, at any depth, by key (FileInfo: path, size, mtime_ns);
        (key, reason) of the objects left out: writer debris and other non-data, as in a folder)."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        except Exception as e:
            raise DataError(f"data.source {self.describe()} cannot be listed ({secrets.mask(str(e))}): check the "
                            "bucket name and the credentials") from None
        data, skipped = [], []
        for i in sorted((i for i in infos if i.type == pafs.FileType.File), key=self.key):
            *folders, name = self.key(i).split("/")
            if folders[:1] == [QUARANTINE]:
                continue
            why = next((w for w in (listing.debris(f, True) for f in folders) if w), None) or listing.debris(name, False)
            if why is None and not listing.data_name(name):
                why = "not a data file (data is *.parquet, or a Spark part-* file)"
            if why:
                skipped.append((self.key(i), why))
            else:
                data.append(i)
        return data, skipped

    def shards(self) -> list:
        """The data objects under the prefix, at any depth (FileInfo: path, size, mtime_ns), by key."""
        return self.listing()[0]

    def mirror(self, folder: Path) -> list[tuple[str, str]]:
        """Download each data object not mirrored yet (or changed) to its key below `folder`,
        keeping its modification time; drop mirrored shards whose object is gone (moved or
        deleted in the bucket). Returns (key, reason) of the objects left out, for the record."""
        folder.mkdir(parents=True, exist_ok=True)
        listed, skipped = self.listing()
        for info in listed:
            local = folder / self.key(info)
            if local.is_file() and local.stat().st_size == info.size and local.stat().st_mtime_ns == info.mtime_ns:
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.part")  # hidden: a listing of the mirror never takes it for data
            try:
                with self.fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
            except OSError as e:  # gone since the listing, or the download broke: the next cycle tries again
                tmp.unlink(missing_ok=True)
                why = ("vanished: deleted or moved in the bucket after it was listed" if isinstance(e, FileNotFoundError)
                       else f"could not be downloaded ({secrets.mask(str(e))[:160]}): the next cycle tries again")
                skipped.append((self.key(info), why))
                continue
            os.utime(tmp, ns=(info.mtime_ns, info.mtime_ns))
            tmp.replace(local)  # a shard appears whole or not at all, as in a folder source
        keys = {self.key(i) for i in listed} - {k for k, _ in skipped}
        for stale in folder.rglob("*"):
            rel = stale.relative_to(folder)
            if (rel.parts[0] != QUARANTINE and listing.data_name(stale.name) and rel.as_posix() not in keys
                    and (stale.is_file() or stale.is_symlink())):
                stale.unlink()  # only the mirror's copy: the object itself was moved or deleted in the bucket
        for empty in sorted((d for d in folder.rglob("*") if d.is_dir() and not d.is_symlink()), reverse=True):
            if empty.relative_to(folder).parts[0] != QUARANTINE and not any(empty.iterdir()):
                empty.rmdir()  # a prefix whose objects are gone: not an empty dataset of the user's
        return skipped

    def upload(self, local: Path, key: str | None = None) -> str:
        """Put a local shard into the bucket under `key` below the prefix, by default its name
        (what a producer does)."""
        dst = f"{self.root}/{key or local.name}"
        with open(local, "rb") as src, self.fs.open_output_stream(dst) as f:
            while block := src.read(1 << 20):
                f.write(block)
        return dst

    def quarantine(self, name: str, reason: dict) -> str:
        """Move the object `name` (its key below the prefix) to `_quarantine/<name>` with
        `<name>.reason.json` beside it. The reason first: a failure between the steps leaves
        the object in place, quarantined again next cycle, never a quarantined object without
        its reason."""
        src, dst = f"{self.root}/{name}", f"{self.root}/{QUARANTINE}/{name}"
        if self.fs.get_file_info(dst).type != 0:  # keep both, as in a folder source
            stem, dot, ext = name.rpartition(".") if "." in name.rsplit("/", 1)[-1] else (name, "", "")
            dst = f"{self.root}/{QUARANTINE}/{stem}-{reason.get('sha256', '')[:12]}{dot}{ext}"
        self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)  # a folder on a local or mounted filesystem
        with self.fs.open_output_stream(dst + ".reason.json") as f:
            f.write(json.dumps(reason, indent=2).encode())
        self.fs.copy_file(src, dst)
        self.fs.delete_file(src)
        return dst

    def pending(self, folder: Path, learned: set[str], hash_of, dnf: list | None = None) -> tuple[int, float | None]:
        """New rows waiting in the bucket and the oldest unlearned arrival: a mirrored object
        is recognised by its hash (`hash_of(local path)`, None when it is gone), any other
        counts its footer's rows. `dnf`: data.partitions.filter, as for a folder."""
        import pyarrow.parquet as pq

        rows, oldest, seen = 0, None, set()
        for info in self.shards():
            if not listing.matches(listing.partitions_of(self.key(info)), dnf or []):
                continue
            local = folder / self.key(info)
            try:
                mirrored = local.stat().st_size == info.size and local.stat().st_mtime_ns == info.mtime_ns
            except OSError:
                mirrored = False
            sha = hash_of(local) if mirrored else None
            if sha is not None:
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
