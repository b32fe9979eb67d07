"""Before a sharded job sends anything: Ray found, the cluster reached, the shared location
checked from every node, and the manifest planned or adopted. Each problem is a clear error
(exit 2) that says what to fix."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import SpecError
from .snapshots import Shared
from .spec import JobSpec
from .store import Store

log = logging.getLogger("batchrunner")

SHARDS_PER_CPU = 4
CONNECT_TIMEOUT_S = 5.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        msg = (
            '[scale] engine = "ray" (--engine ray) needs Ray, which is not installed: '
            "pip install 'batchrunner[ray]' (on the driver and on every node of the cluster)"
        )
        raise SpecError(msg) from None
    return ray


def _reachable(address: str) -> None:
    """A `host:port` address must accept a TCP connection (Ray's own wait is long and quiet)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        msg = f"[scale] address = {address!r}: give the head node as host:port (ray start --head prints it), or ray://host:port"
        raise SpecError(msg)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        msg = (
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with `ray start --head` "
            f"there, or check [scale] address / --address (nothing was sent)"
        )
        raise SpecError(msg) from None


@contextlib.contextmanager
def connected(spec: JobSpec) -> Iterator[Any]:
    """Ray, connected: the instance this process already runs (a test's, a notebook's), the
    cluster at `[scale] address`, or a new local one; shut down after only if started here."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = spec.scale.address
    if address is not None:
        _reachable(address)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(
            address=address or "local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        msg = f"cannot connect to the Ray cluster at {address or 'a new local instance'}: {exc} (nothing was sent)"
        raise SpecError(msg) from None
    finally:
        for sig, handler in handlers.items():  # Ray's own would end the driver without the run's ending
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
    try:
        yield ray
    finally:
        ray.shutdown()


def shared_location(spec: JobSpec, ray: Any) -> str:
    """`[scale] shared_dir`, or beside the store when the whole cluster is this machine."""
    if spec.scale.shared_dir:
        return spec.scale.shared_dir
    if len(alive_nodes(ray)) > 1 or (spec.scale.address or "").startswith("ray://"):
        msg = (
            "[scale] shared_dir is not set, and the cluster has other machines: set it to a path every node "
            "mounts (NFS, ...) or an object-store URI such as s3://bucket/prefix"
        )
        raise SpecError(msg)
    return str(Path(f"{spec.db_path}.shards"))


def alive_nodes(ray: Any) -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


def _probe(location: str, job: str) -> tuple[str, str | None]:
    from .shardtask import node_id

    node = node_id()
    return node, Shared(location, job).probe(node)


def check_shared(spec: JobSpec, ray: Any, location: str) -> Shared:
    """Every node writes (and reads back) a file in the shared location, and this process must
    see each node's file: a local folder of one machine fails here, before anything is sent."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    shared = Shared(location, spec.job.name)
    problem = shared.probe("driver")
    if problem is not None:
        raise SpecError(f"[scale] shared_dir {location!r} is not writable here: {problem}")
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = alive_nodes(ray)
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            location, spec.job.name
        )
        for node in nodes
    ]
    answers = ray.get(refs, timeout=120)
    seen = shared.probes()
    for node, problem in answers:
        if problem is not None:
            raise SpecError(f"[scale] shared_dir {location!r} is not writable on node {node}: {problem}")
        if node not in seen:
            msg = (
                f"[scale] shared_dir {location!r} is not shared: node {node} wrote there, but this machine does not "
                "see its file. Use a path every node mounts at the same place, or an object-store URI"
            )
            raise SpecError(msg)
    return shared


def plan(spec: JobSpec, store: Store, ray: Any, *, n_rows: int, signature: str, location: str) -> list[dict[str, Any]]:
    """The job's shards: the manifest in the store when it is of this very input, else a new
    one (N shards of consecutive rows, N = `[scale] shards`, or 4 per CPU of the cluster)."""
    job = spec.job.name
    found = store.shard_plan(job)
    if found is not None and found["rows"] == n_rows and found["input_signature"] == signature:
        if spec.scale.shards is not None and spec.scale.shards != found["shards"]:
            log.warning(
                "%s: keeping the %d shards planned for this input (asked for %d): a shard's rows never change",
                job,
                found["shards"],
                spec.scale.shards,
            )
        return store.shards(job)
    if found is not None and any(s["state"] not in ("planned", "merged") for s in store.shards(job)):
        msg = (
            f"{store.path}: the input changed since shards of it last ran, and some of them were not merged; "
            "run the job once more on the earlier input (or remove the shards' snapshots) first"
        )
        raise SpecError(msg)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    count = max(1, min(n_rows, spec.scale.shards or SHARDS_PER_CPU * max(1, cpus)))
    ranges = [(k * n_rows // count, (k + 1) * n_rows // count) for k in range(count)]
    store.save_shard_plan(job, rows=n_rows, input_signature=signature, shared_dir=location, ranges=ranges)
    return store.shards(job)
