"""The prepared-data directory: the one contract between the data pipeline and everything else.

``seqrec data prepare`` and ``seqrec data synth`` write it; training, evaluation, baselines and
serving read it through :class:`PreparedData` and nothing else.

Layout of a prepared directory::

    meta.json             format version, behaviours, counts, language, text fields, split, profile
    data_config.yaml      the resolved DataConfig that produced it
    items.parquet         item_idx:int32 (== row), item_id:str, then text fields (str, nullable)
    users.parquet         user_idx:int32 (== row), user_id:str, train_end, valid_pos, test_pos (int32)
    events.parquet        user_idx:int32, item_idx:int32, timestamp:int64 (unix s), behavior:int8
                          (index into meta.behaviors), value:float32 (NaN if absent); sorted by
                          user, then time, then original row (ties keep the log's order)
    profiles.parquet      user_idx, then cat__<name>:int32 codes and num__<name>:float32 values
    profile_spec.json     {"source": ..., "categorical": [{"name", "vocab"}], "numeric": [{"name", "mean", "std"}]}
    report.json / .md     counts, rows dropped per reason, length histograms

Splits are positions into each user's time-ordered event list (``events`` rows of that user):

* ``train_end``: events ``[0, train_end)`` are the training part (the only part used for fitting
  anything: profiles, popularity, vocabularies).
* ``valid_pos``: the validation target; its model input is events ``[0, valid_pos)``; -1 = none.
* ``test_pos``: the test target; its model input is events ``[0, test_pos)``; -1 = none.

Leave-one-out: ``test_pos`` = last eligible event, ``valid_pos`` = the eligible event before it,
``train_end = valid_pos``. An event is eligible when its behaviour is in ``target_behaviors``
(all behaviours when that list is empty). The target event itself is never inside its input.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

FORMAT_VERSION = 1
PREPARED_MARKER = "seqrec_prepared.json"
"""Marks a folder written by `seqrec data prepare|synth`: the only kind `--overwrite` replaces."""
Split = Literal["train", "valid", "test"]
# "serve": a user's whole history, no target (export, recommendations).
View = Literal["train", "valid", "test", "serve"]

META_FILE = "meta.json"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
EVENTS_FILE = "events.parquet"
PROFILES_FILE = "profiles.parquet"
PROFILE_SPEC_FILE = "profile_spec.json"
REQUIRED_FILES = (META_FILE, ITEMS_FILE, USERS_FILE, EVENTS_FILE)


class DataError(ValueError):
    """Input data is malformed. The message names the file and, where known, line and column."""


@dataclass
class ProfileSpec:
    """Encoded profile features: categorical vocabularies and numeric standardization (train-fitted)."""

    source: str = "none"  # demographics | behavioural | none
    categorical: list[dict[str, Any]] = field(default_factory=list)  # {"name": str, "vocab": [str, ...]}
    numeric: list[dict[str, Any]] = field(default_factory=list)  # {"name": str, "mean": f, "std": f}

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes: vocab + 1 (code 0 is 'unknown / missing')."""
        return [len(c["vocab"]) + 1 for c in self.categorical]

    @property
    def num_numeric(self) -> int:
        return len(self.numeric)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "categorical": self.categorical, "numeric": self.numeric}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProfileSpec:
        return cls(
            data.get("source", "none"), list(data.get("categorical", [])), list(data.get("numeric", []))
        )


@dataclass
class PreparedData:
    """A prepared data set in memory, with per-user sequences as CSR arrays (no per-user objects).

    ``items`` / ``users`` are DataFrames indexed by position (``item_idx`` / ``user_idx``).
    ``seq_*`` arrays hold all events sorted by user then time; user ``u``'s events are
    ``offsets[u]:offsets[u + 1]``.
    """

    meta: dict[str, Any]
    items: pd.DataFrame
    users: pd.DataFrame
    seq_items: np.ndarray  # [E] int32
    seq_times: np.ndarray  # [E] int64
    seq_behaviors: np.ndarray  # [E] int8
    offsets: np.ndarray  # [U + 1] int64
    profile_cat: np.ndarray  # [U, C] int64 (0 = unknown)
    profile_num: np.ndarray  # [U, F] float32
    profile_spec: ProfileSpec
    path: Path | None = None
    # [U] bool: users whose events are loaded (None = all). A rank of a multi-process run loads
    # only its own users' events from a sharded directory (seqrec/data/shards.py); the global
    # tables (meta, items, users, profiles) are always whole.
    loaded: np.ndarray | None = None
    item_counts: np.ndarray | None = None  # global train_item_counts() when events are partial
    _hashes: np.ndarray | None = field(default=None, repr=False)

    # ---- sizes and names -------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    @property
    def behaviors(self) -> list[str]:
        return list(self.meta["behaviors"])

    @property
    def language(self) -> str:
        return str(self.meta.get("language", "en"))

    @property
    def text_fields(self) -> list[str]:
        return list(self.meta.get("text_fields", []))

    # ---- sequences and splits ----------------------------------------------------------------
    def sequence(self, user_idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, timestamps, behaviours) of one user's whole time-ordered history (views)."""
        if self.loaded is not None and not self.loaded[user_idx]:
            raise DataError(
                f"user {user_idx}'s events are not loaded in this process (another rank owns them)"
            )
        a, b = self.offsets[user_idx], self.offsets[user_idx + 1]
        return self.seq_items[a:b], self.seq_times[a:b], self.seq_behaviors[a:b]

    def input_end(self, user_idx: int, split: Split) -> int:
        """Exclusive end of the model input for `split` (-1 if the user has no such target)."""
        row = self.users.iloc[user_idx]
        if split == "train":
            return int(row["train_end"])
        return int(row["valid_pos" if split == "valid" else "test_pos"])

    def target(self, user_idx: int, split: Literal["valid", "test"]) -> int:
        """The held-out item for `split` (the event at the split position); -1 if none."""
        pos = self.input_end(user_idx, split)
        return -1 if pos < 0 else int(self.seq_items[self.offsets[user_idx] + pos])

    def eval_users(self, split: Literal["valid", "test"]) -> np.ndarray:
        """Users that have a target for `split`, ascending."""
        col = "valid_pos" if split == "valid" else "test_pos"
        return np.flatnonzero(self.users[col].to_numpy() >= 0).astype(np.int64)

    def train_users(self, min_events: int = 2) -> np.ndarray:
        """Users with at least `min_events` training events (enough for one input and one target)."""
        return np.flatnonzero(self.users["train_end"].to_numpy() >= min_events).astype(np.int64)

    def train_item_counts(self) -> np.ndarray:
        """[n_items] event counts in the training part only (popularity, log-Q, cold-item slices)."""
        if self.item_counts is not None:
            return self.item_counts
        if self.loaded is not None:
            raise DataError(
                "this process holds only its own users' events: set item_counts (summed over ranks)"
            )
        return self.local_item_counts()

    def local_item_counts(self) -> np.ndarray:
        """[n_items] training-part event counts of the users loaded here (all users unless partial)."""
        ends = self.users["train_end"].to_numpy()
        pos = np.arange(self.n_events) - np.repeat(self.offsets[:-1], np.diff(self.offsets))
        in_train = pos < np.repeat(ends, np.diff(self.offsets))
        return np.bincount(self.seq_items[in_train], minlength=self.n_items).astype(np.int64)

    def user_hashes(self) -> np.ndarray:
        """[U] uint64 user-hash of each user (the shard and rank rule of seqrec/data/shards.py)."""
        if self._hashes is None:
            from seqrec.data.shards import user_hashes

            self._hashes = user_hashes(self.users["user_id"].to_numpy(object))
        return self._hashes

    def owner_ranks(self, world: int) -> np.ndarray:
        """[U] the rank that owns each user in a run of `world` processes."""
        from seqrec.data.shards import owner_ranks

        return owner_ranks(self.user_hashes(), world)

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, rank: int = 0, world: int = 1) -> PreparedData:
        """Read a prepared directory, checking that it is complete.

        With ``world > 1`` and a sharded directory (``prepare --shards N``), only the event shards
        that can hold users of `rank` are read, and only its own users' events kept (`loaded`);
        `item_counts` must then be set from all ranks before ``train_item_counts()`` is used.
        Unsharded events are read whole whatever `rank`."""
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"prepared data directory not found: {path}")
        missing = [
            f
            for f in REQUIRED_FILES
            if not (path / f).is_file() and not (f == EVENTS_FILE and (path / "shards.json").is_file())
        ]
        if missing:
            raise DataError(
                f"{path} is not a prepared data directory (missing {', '.join(missing)}); "
                "create one with `seqrec data prepare` or `seqrec data synth`"
            )
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{path / META_FILE}: format_version {meta.get('format_version')} is not "
                f"{FORMAT_VERSION}; re-run `seqrec data prepare`"
            )
        items = pd.read_parquet(path / ITEMS_FILE)
        users = pd.read_parquet(path / USERS_FILE)
        loaded = None
        if world > 1 and (path / "shards.json").is_file() and not (path / EVENTS_FILE).is_file():
            events, loaded = read_rank_events(path, users["user_id"].to_numpy(object), rank, world)
        else:
            events = read_events(path)
        spec = ProfileSpec()
        profiles = None
        if (path / PROFILE_SPEC_FILE).is_file():
            spec = ProfileSpec.from_json(json.loads((path / PROFILE_SPEC_FILE).read_text(encoding="utf-8")))
        if (path / PROFILES_FILE).is_file():
            profiles = pd.read_parquet(path / PROFILES_FILE)
        data = cls.from_frames(meta, items, users, events, profiles, spec)
        data.path = path
        data.loaded = loaded
        return data

    @classmethod
    def from_frames(
        cls,
        meta: dict[str, Any],
        items: pd.DataFrame,
        users: pd.DataFrame,
        events: pd.DataFrame,
        profiles: pd.DataFrame | None = None,
        spec: ProfileSpec | None = None,
    ) -> PreparedData:
        """Build from in-memory tables already in the prepared layout (also used by tests)."""
        n_users = len(users)
        if not np.array_equal(users["user_idx"].to_numpy(), np.arange(n_users)):
            raise DataError("users.user_idx must equal the row number 0..n-1")
        if not np.array_equal(items["item_idx"].to_numpy(), np.arange(len(items))):
            raise DataError("items.item_idx must equal the row number 0..n-1")
        user_col = events["user_idx"].to_numpy()
        if len(user_col) and np.any(np.diff(user_col) < 0):
            raise DataError("events must be sorted by user_idx")
        counts = np.bincount(user_col, minlength=n_users) if len(user_col) else np.zeros(n_users, int)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        spec = spec or ProfileSpec()
        profile_cat = np.zeros((n_users, len(spec.categorical)), dtype=np.int64)
        profile_num = np.zeros((n_users, len(spec.numeric)), dtype=np.float32)
        if profiles is not None and len(spec.categorical) + len(spec.numeric):
            prof = profiles.set_index("user_idx").reindex(np.arange(n_users))
            for j, c in enumerate(spec.categorical):
                profile_cat[:, j] = prof[f"cat__{c['name']}"].fillna(0).to_numpy(np.int64)
            for j, c in enumerate(spec.numeric):
                profile_num[:, j] = prof[f"num__{c['name']}"].fillna(0.0).to_numpy(np.float32)
        return cls(
            meta=meta,
            items=items.reset_index(drop=True),
            users=users.reset_index(drop=True),
            seq_items=events["item_idx"].to_numpy(np.int32),
            seq_times=events["timestamp"].to_numpy(np.int64),
            seq_behaviors=events["behavior"].to_numpy(np.int8),
            offsets=offsets,
            profile_cat=profile_cat,
            profile_num=profile_num,
            profile_spec=spec,
        )


def read_events(path: Path) -> pd.DataFrame:
    """events.parquet, or the user-hash shards ``events/part-*.parquet`` of ``prepare --shards N``
    merged back into (user_idx, timestamp, row) order (a user's events are all in one shard)."""
    if (path / EVENTS_FILE).is_file() or not (path / "shards.json").is_file():
        return pd.read_parquet(path / EVENTS_FILE)
    manifest = json.loads((path / "shards.json").read_text(encoding="utf-8"))
    parts = [pd.read_parquet(path / p["file"]) for p in manifest["parts"]]
    events = pd.concat(parts, ignore_index=True)
    order = np.argsort(events["user_idx"].to_numpy(), kind="stable")
    return events.iloc[order].reset_index(drop=True)


EVENT_READ_COLUMNS = ["user_idx", "item_idx", "timestamp", "behavior"]


def read_rank_events(
    path: Path, user_ids: np.ndarray, rank: int, world: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """The events of `rank`'s users from the shards that can hold them (seqrec/data/shards.py),
    memory-mapped files read column by column; returns (events sorted by user, [U] loaded mask)."""
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqrec.data.shards import owner_ranks, rank_shard_files, reads_only_own_users, shard_manifest
    from seqrec.data.shards import user_hashes as hashes_of

    manifest = shard_manifest(path)
    assert manifest is not None
    files = rank_shard_files(manifest, rank, world)
    owned = owner_ranks(hashes_of(user_ids), world) == rank
    tables = [pq.read_table(path / f, columns=EVENT_READ_COLUMNS, memory_map=True) for f in files]
    table = pa.concat_tables(tables) if tables else None
    events = (
        table.to_pandas()
        if table is not None
        else pd.DataFrame({c: np.zeros(0, np.int64) for c in EVENT_READ_COLUMNS})
    )
    if not reads_only_own_users(manifest, world):
        events = events[owned[events["user_idx"].to_numpy()]]
    order = np.argsort(events["user_idx"].to_numpy(), kind="stable")  # parts are each sorted already
    events = events.iloc[order].reset_index(drop=True)
    logging.getLogger(__name__).info(
        "rank %d of %d reads %d of %d event shards (%s): %d users, %d events",
        rank,
        world,
        len(files),
        int(manifest["shards"]),
        ", ".join(Path(f).name for f in files),
        int(owned.sum()),
        len(events),
    )
    return events, owned


def write_prepared(
    out: Path,
    meta: dict[str, Any],
    items: pd.DataFrame,
    users: pd.DataFrame,
    events: pd.DataFrame,
    profiles: pd.DataFrame | None = None,
    spec: ProfileSpec | None = None,
) -> None:
    """Write the prepared layout into an existing (normally temporary) directory `out`."""
    meta = {**meta, "format_version": FORMAT_VERSION}
    meta.setdefault("n_users", len(users))
    meta.setdefault("n_items", len(items))
    meta.setdefault("n_events", len(events))
    (out / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    # What `--overwrite` looks for before it replaces a folder (seqrec/data/guard.py).
    (out / PREPARED_MARKER).write_text(
        json.dumps({"format_version": FORMAT_VERSION}) + "\n", encoding="utf-8"
    )
    items.to_parquet(out / ITEMS_FILE, index=False)
    users.to_parquet(out / USERS_FILE, index=False)
    events.to_parquet(out / EVENTS_FILE, index=False)
    if profiles is not None:
        profiles.to_parquet(out / PROFILES_FILE, index=False)
    spec = spec or ProfileSpec()
    (out / PROFILE_SPEC_FILE).write_text(
        json.dumps(spec.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


@contextmanager
def atomic_directory(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; rename it into place only if the block succeeds.

    A failure (exception, Ctrl-C) removes the temporary directory, so a half-written output never
    appears at `final`. With `overwrite`, an existing `final` is replaced only after success.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
