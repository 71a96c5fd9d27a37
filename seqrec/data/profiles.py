"""Profile features per user, fitted on the TRAIN part only (no statistic sees a valid/test event).

* demographics (a users table exists): categorical fields -> vocabulary codes (1..V in order of
  frequency among training users, 0 = missing or never seen in training); numeric fields ->
  standardized with the training users' mean and std (missing -> 0, the mean).
* behavioural (no users table, or ``data.profile=behavioural``), from events ``[0, train_end)``:
  ``log_events`` (log1p of the training event count), ``log_recency_days`` (log1p of the days
  between the user's last training event and the last training event of anyone), one
  ``share_<behaviour>`` per behaviour when there are several, and ``top_category_1..N``
  (the user's most frequent categories, ties to the category more frequent overall).

A "training user" is a user with at least one training event. Output: ``profiles`` (user_idx,
``cat__<name>`` int32, ``num__<name>`` float32) and a :class:`ProfileSpec` (schema.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from seqrec.config import ConfigError, DataConfig
from seqrec.data.schema import ProfileSpec

DAY = 86400.0


def encode_categorical(values: pd.Series, fit: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(codes, vocab): vocab from the `fit` rows by frequency (ties by value), 0 = unseen/missing."""
    text = values.astype(object).where(values.notna(), None)
    counts = pd.Series(text[fit]).dropna().astype(str).value_counts()
    vocab = sorted(counts.index.tolist(), key=lambda v: (-int(counts[v]), v))
    lookup = {v: i + 1 for i, v in enumerate(vocab)}
    codes = text.map(lambda v: lookup.get(str(v), 0) if v is not None else 0).to_numpy(dtype=np.int32)
    return codes, vocab


def standardize(values: np.ndarray, fit: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(standardized values, mean, std) with mean/std from the `fit` rows; NaN -> 0."""
    sample = values[fit & ~np.isnan(values)]
    mean = float(sample.mean()) if len(sample) else 0.0
    std = float(sample.std()) if len(sample) > 1 else 0.0
    std = std if std > 1e-12 else 1.0
    out = (values - mean) / std
    return np.nan_to_num(out, nan=0.0).astype(np.float32), mean, std


class _Builder:
    """Collects encoded columns and the matching spec entries."""

    def __init__(self, n_users: int, source: str):
        self.frame: dict[str, np.ndarray] = {"user_idx": np.arange(n_users, dtype=np.int32)}
        self.spec = ProfileSpec(source=source)

    def categorical(self, name: str, values: pd.Series, fit: np.ndarray) -> None:
        codes, vocab = encode_categorical(values, fit)
        self.frame[f"cat__{name}"] = codes
        self.spec.categorical.append({"name": name, "vocab": vocab})

    def numeric(self, name: str, values: np.ndarray, fit: np.ndarray) -> None:
        out, mean, std = standardize(values.astype(np.float64), fit)
        self.frame[f"num__{name}"] = out
        self.spec.numeric.append({"name": name, "mean": mean, "std": std})

    def result(self) -> tuple[pd.DataFrame, ProfileSpec]:
        return pd.DataFrame(self.frame), self.spec


def demographics(users: pd.DataFrame, train_end: np.ndarray) -> tuple[pd.DataFrame, ProfileSpec]:
    """`users` is aligned with user_idx (one row per user, profile fields only)."""
    fit = train_end > 0
    b = _Builder(len(users), "demographics")
    for name in users.columns:
        col = users[name]
        if pd.api.types.is_float_dtype(col):
            b.numeric(name, col.to_numpy(np.float64), fit)
        else:
            b.categorical(name, col, fit)
    return b.result()


def behavioural(
    item_idx: np.ndarray,
    times: np.ndarray,
    behaviors: np.ndarray,
    offsets: np.ndarray,
    train_end: np.ndarray,
    behavior_names: list[str],
    item_category: pd.Series | None,
    top_n: int,
) -> tuple[pd.DataFrame, ProfileSpec]:
    """Activity, recency, behaviour mix and top categories from each user's training events."""
    n_users = len(offsets) - 1
    counts = np.diff(offsets)
    user = np.repeat(np.arange(n_users), counts)
    in_train = (np.arange(len(times)) - np.repeat(offsets[:-1], counts)) < np.repeat(train_end, counts)
    fit = train_end > 0
    b = _Builder(n_users, "behavioural")

    b.numeric("log_events", np.log1p(train_end.astype(np.float64)), fit)
    last = np.full(n_users, np.nan)
    last[fit] = times[offsets[:-1][fit] + train_end[fit] - 1]
    global_end = np.nanmax(last) if fit.any() else 0.0
    b.numeric("log_recency_days", np.log1p((global_end - last) / DAY), fit)
    if len(behavior_names) > 1:
        mix = np.zeros((n_users, len(behavior_names)))
        np.add.at(mix, (user[in_train], behaviors[in_train].astype(np.int64)), 1.0)
        shares = mix / np.maximum(train_end, 1)[:, None]
        shares[~fit] = np.nan
        for j, name in enumerate(behavior_names):
            b.numeric(f"share_{name}", shares[:, j], fit)
    if item_category is not None and top_n > 0:
        cats = item_category.to_numpy(dtype=object)[item_idx[in_train]]
        pairs = pd.DataFrame({"user": user[in_train], "cat": cats}).dropna()
        overall = pairs["cat"].value_counts()
        rank = {c: r for r, c in enumerate(sorted(overall.index, key=lambda c: (-int(overall[c]), str(c))))}
        per_user = pairs.groupby(["user", "cat"], sort=False).size().rename("n").reset_index()
        per_user["rank"] = per_user["cat"].map(rank)
        per_user = per_user.sort_values(["user", "n", "rank"], ascending=[True, False, True], kind="stable")
        per_user["k"] = per_user.groupby("user").cumcount()
        for k in range(top_n):
            top = per_user[per_user["k"] == k]
            values = pd.Series([None] * n_users, dtype=object)
            values.iloc[top["user"].to_numpy()] = top["cat"].to_numpy()
            b.categorical(f"top_category_{k + 1}", values, fit)
    return b.result()


def category_column(items: pd.DataFrame, configured: str | None) -> str | None:
    if configured:
        if configured not in items.columns:
            raise ConfigError(
                f"data.category_field {configured!r} is not an item field ({list(items.columns)})"
            )
        return configured
    for name in ("category", "categories", "genres", "genre"):
        if name in items.columns:
            return name
    return None


def profile_kind(cfg: DataConfig, users: pd.DataFrame | None) -> str:
    """ "none", "demographics" or "behavioural": data.profile resolved against the data (auto means
    demographics when `users` has fields); shared by both prepare engines."""
    has_users = users is not None and users.shape[1] > 0
    if cfg.profile == "none":
        return "none"
    if cfg.profile == "demographics" and not has_users:
        raise ConfigError(
            "data.profile=demographics but the data has no user profile table (data.source.users_file)"
        )
    return (
        "demographics"
        if cfg.profile == "demographics" or (cfg.profile == "auto" and has_users)
        else "behavioural"
    )


def fit_profiles(
    cfg: DataConfig,
    users: pd.DataFrame | None,
    items: pd.DataFrame,
    item_idx: np.ndarray,
    times: np.ndarray,
    behaviors: np.ndarray,
    offsets: np.ndarray,
    train_end: np.ndarray,
    behavior_names: list[str],
) -> tuple[pd.DataFrame | None, ProfileSpec]:
    """Profiles per data.profile (auto: demographics when `users` has fields, else behavioural)."""
    kind = profile_kind(cfg, users)
    if kind == "none":
        return None, ProfileSpec()
    if kind == "demographics":
        assert users is not None
        return demographics(users, train_end)
    field = category_column(items, cfg.category_field)
    return behavioural(
        item_idx, times, behaviors, offsets, train_end, behavior_names,
        items[field] if field else None, cfg.top_categories,
    )  # fmt: skip
