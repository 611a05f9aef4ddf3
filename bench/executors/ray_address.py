"""Which Ray cluster `ray.init` will try and where that address comes from (--ray-address,
RAY_ADDRESS, or the file a `ray start` leaves behind), by Ray's own rule, so that a dead address is
named, and refused at once, instead of waited out as "the default Ray address". Ray-free."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

CLUSTER_FILE = "ray_current_cluster"  # what `ray start` writes into Ray's temp folder: the head's address
LOCAL = "a new local Ray instance"
FROM_ENV = "RAY_ADDRESS"
FROM_FILE = "from the last `ray start` on this machine,"  # followed by the file's path


def cluster_file(env: Mapping[str, str] = os.environ) -> Path:
    """Where `ray start` records its cluster's address: RAY_TMPDIR, else TMPDIR (Linux), else /tmp,
    then `ray/ray_current_cluster` (ray._common.utils.get_ray_address_file)."""
    base = env.get("RAY_TMPDIR") or (env.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    return Path(base) / "ray" / CLUSTER_FILE


def cluster_target(address: str | None, env: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """(the address Ray will connect to, where it came from); (None, LOCAL) when Ray starts its own
    instance. An explicit address is used as given; with none (or `auto`) RAY_ADDRESS, then the
    `ray start` file (ray._private.services.get_ray_address_from_environment)."""
    if address == "local":
        return None, LOCAL
    if address and address != "auto":
        return address, "--ray-address"
    if env.get(FROM_ENV):
        return env[FROM_ENV], FROM_ENV
    path = cluster_file(env)
    try:
        recorded = path.read_text().strip()
    except OSError:
        recorded = ""
    if recorded:
        return recorded, f"{FROM_FILE} {path}"
    return (None, LOCAL) if address is None else ("auto", "--ray-address auto")


def dead_hint(source: str) -> str:
    """What to do about an address that does not answer, by where it came from."""
    if source == FROM_ENV:
        return "unset RAY_ADDRESS, or set it (or --ray-address) to a running cluster's head"
    if source.startswith(FROM_FILE):
        return ("that cluster is no longer running: `ray stop` (or delete the file) to start a local instance "
                "instead, or pass --ray-address")
    return ("check the address (`ray status` on the head prints it), that the cluster is running, and that "
            "this machine can reach that port")
