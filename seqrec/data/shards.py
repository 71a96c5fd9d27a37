"""Which training process owns which users, and which event shards it reads.

The one rule, for sharded and unsharded data alike::

    owner(user) = int.from_bytes(md5(user_id)[:8], "big") % world_size

``seqrec data prepare --engine duckdb --shards N`` puts a user in shard ``hash % N`` (see
seqrec/data/engine_duckdb.py), so when ``world_size`` divides ``N`` rank ``r`` owns exactly the users
of the shards ``s`` with ``s % world_size == r`` and reads only those files. Otherwise a shard holds
users of several ranks: rank ``r`` reads the shards ``s`` with ``s % g == r % g`` (``g = gcd(N,
world_size)``, every shard that can hold one of its users) and keeps its own users. Unsharded data
needs no virtual shard count: the owner is the same function of the user id, so a run on the
unsharded directory deals the same users to the same ranks as a run on any sharding of it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

SHARDS_FILE = "shards.json"


def user_hashes(user_ids: Iterable[Any]) -> np.ndarray:
    """[U] uint64 ``int.from_bytes(md5(str(user_id))[:8], "big")``: the user-hash of the shards."""
    ids = list(user_ids)
    return np.fromiter(
        (int.from_bytes(hashlib.md5(str(u).encode("utf-8")).digest()[:8], "big") for u in ids),
        dtype=np.uint64,
        count=len(ids),
    )


def owner_ranks(hashes: np.ndarray, world: int) -> np.ndarray:
    """[U] int64 rank that owns each user (``hash % world``)."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    return (hashes % np.uint64(world)).astype(np.int64)


def shard_manifest(path: Path) -> dict[str, Any] | None:
    """The ``shards.json`` of a prepared directory, or None when its events are one file."""
    f = Path(path) / SHARDS_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None


def rank_shard_files(manifest: dict[str, Any], rank: int, world: int) -> list[str]:
    """The part files (relative paths) that can hold users of `rank` out of `world` processes."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    n = int(manifest["shards"])
    g = math.gcd(n, world)
    return [str(p["file"]) for s, p in enumerate(manifest["parts"]) if s % g == rank % g]


def reads_only_own_users(manifest: dict[str, Any], world: int) -> bool:
    """True when every shard a rank reads holds only that rank's users (world divides the shards)."""
    return int(manifest["shards"]) % world == 0
