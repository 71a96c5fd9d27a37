"""Using a trained model: embedding export, recommendations, incremental user updates, publishing.

    export.py        export_embeddings(model, data, out): item/user vectors, Parquet + .npy, manifest
    recommend.py     Recommender(model, data).recommend(user_id, k, events) -> Recommendations
    incremental.py   IncrementalEncoder: cached window embeddings, re-encode only changed windows
    publish.py       prepare_folder(...) / upload_folder(...): the HF Hub folder and model card
    cli.py           `seqrec export | recommend | publish`

Names are imported lazily, so `seqrec --help` (which imports seqrec.serving.cli) stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExportResult": "export",
    "export_embeddings": "export",
    "load_item_vectors": "export",
    "model_fingerprint": "export",
    "select_users": "export",
    "Catalogue": "incremental",
    "Event": "incremental",
    "IncrementalEncoder": "incremental",
    "UserEncoding": "incremental",
    "UserState": "incremental",
    "UserStateCache": "incremental",
    "read_events": "incremental",
    "Recommendations": "recommend",
    "Recommender": "recommend",
    "PublishError": "publish",
    "PublishPlan": "publish",
    "prepare_folder": "publish",
    "upload_folder": "publish",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'seqrec.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f"seqrec.serving.{_EXPORTS[name]}"), name)
