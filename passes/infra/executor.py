"""Executors: where the independent pieces of a pass's work run (sensitivity variants, calibration shards).

1. `map(fn, items)` is `[fn(item) for item in items]`, in order, each item in a worker of
   its own; `fn` is a module-level function of an installed module and the items pickle.
2. `LocalProcesses`, the default, runs the items in a pool of processes on this machine,
   one per item, started with `spawn`: a worker inherits no state of the caller (ONNX
   Runtime sessions, threads), so what it computes depends on its item alone.
3. `RayTasks` runs each item as a Ray task. With an address it connects to that cluster
   (`ray://host:port` through Ray Client, or `host:port` of a head node); without one it
   uses the Ray session this process already holds, else the cluster `RAY_ADDRESS` names,
   else starts one on this machine. It connects on the first `map`, so a compile that
   spreads nothing starts nothing. The cluster's workers must import qcompiler, and
   read what an item names: sensitivity variants carry their feeds, but a calibration
   shard of a file or folder source names its path, which other machines see only on a
   shared file system.
4. ray is imported only by `RayTasks`; without it, or with an address that answers no
   Ray head, the error is one line that says so.
5. `executor_named` reads the `--executor` text: `local`, `ray` or `ray://ADDRESS`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .base import PassError
from .progress import silenced

RAY_MISSING = "--executor ray needs the ray extra: pip install qcompiler[ray]"
_RAY_LOGGERS = ("ray", "ray.client_builder", "ray._private.worker")  # ray.init resets the first one's level


class Executor(Protocol):
    """Rule 1; `name` is how `--executor` spells it."""

    name: str

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...


class LocalProcesses:
    """Rule 2."""

    name = "local"

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        with multiprocessing.get_context("spawn").Pool(len(items)) as pool:
            return pool.map(fn, items)


class RayTasks:
    """Rule 3: `address` None for the session already held, RAY_ADDRESS, or a new local cluster."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self.name = address or "ray"
        self._ray = _import_ray()

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        self._connect()
        task = self._ray.remote(fn)
        try:
            return self._ray.get([task.remote(item) for item in items])
        except self._ray.exceptions.RayTaskError as err:
            raise (err.cause or err) from None  # the worker's own error, as LocalProcesses raises it

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address is not None and address.startswith("ray://"):
            _import_ray_client()
        # a cluster of our own serves this machine only: no web UI, on loopback
        own = {} if address else {"include_dashboard": False, "_node_ip_address": "127.0.0.1",
                                  "logging_level": logging.ERROR}
        try:
            with silenced(*_RAY_LOGGERS):
                ray.init(address=address, **own)
        except (ConnectionError, RuntimeError) as err:
            where = f"at {address}" if address else "on this machine"
            raise PassError(f"--executor {self.name}: no Ray cluster answers {where}: "
                            f"{' '.join(str(err).split()) or type(err).__name__}") from None


def executor_named(text: str) -> Executor:
    """Rule 5; anything else is a PassError that lists what is accepted."""
    if text == "local":
        return LocalProcesses()
    if text == "ray":
        return RayTasks()
    if text.startswith("ray://") and len(text) > len("ray://"):
        return RayTasks(text)
    raise PassError(f"--executor {text!r}: expected local, ray or ray://ADDRESS")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PassError(RAY_MISSING) from None
    return ray


def _import_ray_client() -> None:
    """A ray:// address is reached through Ray Client, which needs grpc (ray[client], in the extra)."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise PassError(RAY_MISSING) from None
