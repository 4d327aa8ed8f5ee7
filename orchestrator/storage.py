"""The durable store of a pipeline's outputs: Ray Train checkpoints, engines and cycle records.

`storage.uri` in pipeline.yaml names it: `s3://bucket/prefix`, `gs://bucket/prefix` (any URI
pyarrow's filesystems open, with their query options, e.g. `?endpoint_override=...` for MinIO)
or a path. Unset, it is PLASTER_HOME itself and nothing is copied. PLASTER_HOME always holds
the working copy; this module only mirrors files to the store and fetches them back.

Credentials come from the environment the way pyarrow reads them (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL; GOOGLE_APPLICATION_CREDENTIALS), never from YAML.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.errors import ConfigError, StorageError

_REMOTE = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "abfss://")


class Storage:
    def __init__(self, uri: str | None, home: Path, shared: bool = False):
        self.uri, self.home, self.shared = uri, home, shared
        self.remote = bool(uri) and uri.startswith(_REMOTE)
        self._fs = None
        self._root = ""
        self._sent: dict[str, tuple[int, int]] = {}  # rel path -> (size, mtime_ns) already mirrored

    def __getstate__(self) -> dict:
        # Ray tasks get a copy: reopen the filesystem there with that node's credentials.
        return {**self.__dict__, "_fs": None, "_sent": {}}

    @property
    def local(self) -> bool:
        """True when the store is PLASTER_HOME: nothing to mirror."""
        return not self.uri

    def _open(self):
        if self._fs is None:
            import pyarrow.fs as pafs

            try:
                if self.remote:
                    self._fs, self._root = pafs.FileSystem.from_uri(self.uri)
                else:
                    self._fs, self._root = pafs.LocalFileSystem(), str(Path(self.uri).expanduser().resolve())
            except Exception as e:
                raise ConfigError(f"storage.uri {self.uri!r} cannot be opened: {e}. Check the URI and the "
                                  "credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/"
                                  "AWS_ENDPOINT_URL for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS)") from None
        return self._fs

    def _path(self, rel: str) -> str:
        return f"{self._root.rstrip('/')}/{rel}"

    def describe(self, rel: str = "") -> str:
        """The store's address for messages: no query options, no credentials."""
        base = self.uri.split("?", 1)[0] if self.uri else str(self.home)
        if "@" in base and "://" in base:
            scheme, rest = base.split("://", 1)
            base = f"{scheme}://{rest.split('@', 1)[1]}"
        return f"{base.rstrip('/')}/{rel}" if rel else base

    def ray_train_storage(self) -> tuple[str, object | None]:
        """storage_path and storage_filesystem for Ray Train's RunConfig: checkpoints are
        written by the workers straight to the store."""
        if self.local:
            return str(self.home / "ray"), None
        fs = self._open()
        return self._path("ray"), fs

    def check_reachable(self, hosts: int) -> None:
        """Refuse a store that only one machine sees when the cluster spans several."""
        if hosts > 1 and not self.remote and not self.shared:
            where = self.uri or f"PLASTER_HOME ({self.home})"
            raise ConfigError(
                f"the Ray cluster spans {hosts} machines but storage is the node-local path {where}: workers on "
                "other machines cannot read or write it. Set storage.uri to s3://... or gs://... in pipeline.yaml, "
                "or, if the path is a mount every node sees (NFS), set storage.shared: true")

    def put_file(self, local: Path, rel: str) -> bool:
        """Copy one file to the store unless the same size and mtime was sent already."""
        if self.local:
            return False
        st = local.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        if self._sent.get(rel) == stamp:
            return False
        fs = self._open()
        dest = self._path(rel)
        try:
            fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            with open(local, "rb") as src, fs.open_output_stream(dest) as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
        except OSError as e:  # pyarrow's filesystem errors are OSErrors too
            raise StorageError(f"cannot write {self.describe(rel)} ({e}): storage.uri (or PLASTER_STORAGE_URI) "
                               "must be writable: fix its permissions, mount or credentials, or point it "
                               "elsewhere") from None
        self._sent[rel] = stamp
        return True

    def put_tree(self, folder: Path, rel: str) -> int:
        """Mirror every file under `folder` to `rel/`; return how many were copied."""
        if self.local or not folder.is_dir():
            return 0
        n = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file() and ".tmp" not in path.name:
                n += self.put_file(path, f"{rel}/{path.relative_to(folder).as_posix()}")
        return n

    def get_file(self, rel: str, local: Path) -> bool:
        """Fetch `rel` into `local` (atomically); False when the store has no such file."""
        if self.local:
            return False
        import pyarrow.fs as pafs

        fs = self._open()
        src = self._path(rel)
        if fs.get_file_info(src).type != pafs.FileType.File:
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + f".tmp{os.getpid()}")
        with fs.open_input_stream(src) as inp, open(tmp, "wb") as out:
            while chunk := inp.read(1 << 22):
                out.write(chunk)
        tmp.rename(local)
        return True

    def list(self, rel: str) -> list[str]:
        """Files under `rel`, relative to the store's root (for tests and `plaster status`)."""
        if self.local:
            base = self.home / rel
            return sorted(p.relative_to(self.home).as_posix() for p in base.rglob("*") if p.is_file())
        import pyarrow.fs as pafs

        fs = self._open()
        sel = pafs.FileSelector(self._path(rel), recursive=True, allow_not_found=True)
        root = self._root.rstrip("/") + "/"
        return sorted(i.path[len(root):] for i in fs.get_file_info(sel) if i.type == pafs.FileType.File)


def for_pipeline(pipeline, home: Path) -> Storage:
    return Storage(pipeline.storage_uri, home, pipeline.config.storage.shared)


def cluster_hosts() -> int:
    """Distinct machines among the Ray cluster's alive nodes (several nodes on one machine
    share its disk, so they count once)."""
    import ray

    return len({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})
