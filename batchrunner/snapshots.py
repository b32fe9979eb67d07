"""The job's shared location (`[scale] shared_dir`): where shard stores' snapshots live.

A plain path that every node mounts, or a URI of any filesystem fsspec knows (s3://, gs://,
...; its package installed on every node). SQLite never runs there: a shard works on a store on
its node's local disk and copies a consistent backup here every `snapshot_s` seconds (written
under a temporary name, then moved into place, so a reader never sees half a file).

    <shared_dir>/<job>/shard-00007.sqlite    shard 7's last snapshot
    <shared_dir>/<job>/probes/<node>         written by each node's check at the start
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .errors import SpecError


class Shared:
    """One job's folder in the shared location."""

    def __init__(self, location: str, job: str) -> None:
        from fsspec.core import url_to_fs

        self.location = location
        try:
            self.fs, root = url_to_fs(location)
        except (ImportError, ValueError) as exc:
            msg = f"[scale] shared_dir = {location!r}: no filesystem for it ({exc}); install its fsspec package"
            raise SpecError(msg) from None
        self.root = f"{root.rstrip('/')}/{job}"

    @property
    def local(self) -> bool:
        """Whether it is a plain path (which every node must mount at the same place)."""
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @staticmethod
    def snapshot_name(shard: int) -> str:
        return f"shard-{shard:05d}.sqlite"

    def put(self, local: Path, name: str) -> None:
        """Copy a local file here, replacing `name` whole."""
        self.fs.makedirs(self.root, exist_ok=True)
        final = self.path(name)
        if self.local:
            partial = f"{final}.{uuid.uuid4().hex[:8]}.part"
            self.fs.put_file(str(local), partial)
            os.replace(partial, final)  # atomic on one filesystem
        else:
            self.fs.put_file(str(local), final)  # an object store replaces an object whole

    def get(self, name: str, local: Path) -> bool:
        """Copy `name` to a local file; False when there is none."""
        remote = self.path(name)
        if not self.fs.exists(remote):
            return False
        self.fs.get_file(remote, str(local))
        return True

    def remove(self, name: str) -> None:
        remote = self.path(name)
        if self.fs.exists(remote):
            self.fs.rm_file(remote)

    def probe(self, node: str) -> str | None:
        """Write and read back a file as this node; None when that works, else why not."""
        name = f"probes/{node}"
        try:
            self.fs.makedirs(self.path("probes"), exist_ok=True)
            with tempfile.NamedTemporaryFile("w", suffix=".probe", delete=False) as handle:
                handle.write(node)
            try:
                self.put(Path(handle.name), name)
            finally:
                os.unlink(handle.name)
            with self.fs.open(self.path(name), "r") as back:
                seen = back.read()
        except (OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if seen == node else f"read back {seen!r} instead of what was written"

    def probes(self) -> set[str]:
        """The nodes whose probe this process sees."""
        try:
            listed: list[Any] = self.fs.ls(self.path("probes"), detail=False)
        except (OSError, FileNotFoundError):
            return set()
        return {str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in listed}
