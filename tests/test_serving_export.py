"""`seqrec export`: vectors that reproduce the model's scores, resumable chunked writes, user lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from seqrec.cli import main
from seqrec.data.schema import DataError, PreparedData
from seqrec.errors import CheckpointError
from seqrec.modeling import SeqRecModel
from seqrec.serving.export import export_embeddings, load_item_vectors, select_users
from tests.tiny_models import (  # noqa: F401  (fixtures)
    item_tokens,
    make_batch,
    single_thread,
    tiny_backbones_fixture,
    tiny_run_config,
    torch_single_thread_fixture,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread", "seqrec_cache")
SAMPLE_USERS = [0, 7, 23, 39]


@pytest.fixture(autouse=True)
def seqrec_cache(monkeypatch, tmp_path_factory):
    """Token caches go to a temporary folder, not ~/.cache/seqrec."""
    monkeypatch.setenv("SEQREC_CACHE", str(tmp_path_factory.getbasetemp() / "seqrec-cache"))


@pytest.fixture(scope="module")
def saved(tiny_backbones, tiny_data, tiny_data_dir, tmp_path_factory) -> tuple[Path, SeqRecModel]:
    """A tiny LoRA model after one optimizer step (adapters off their init), saved with its data_dir."""
    with single_thread():
        torch.manual_seed(0)
        cfg = tiny_run_config(tiny_backbones("llama"), **{"train.lr": 0.05, "train.backbone_lr": 0.05})
        cfg.data_dir = str(tiny_data_dir)
        model = SeqRecModel.from_data(cfg, tiny_data)
        model.build_item_cache(item_tokens(model, tiny_data))
        opt = torch.optim.AdamW(model.param_groups(model.cfg.train))
        model.train()
        model(make_batch(model, tiny_data, [0, 1, 2, 3])).loss.backward()
        opt.step()
        model.on_step_end(1)  # as the training loop does: the item cache is now stale
        model.eval()
        path = tmp_path_factory.mktemp("export") / "model"
        model.save_pretrained(path)
        return path, model


def _model_scores(model: SeqRecModel, tiny_data, users: list[int]) -> torch.Tensor:
    model.prepare_eval()
    with torch.no_grad():
        return model.score_batch(make_batch(model, tiny_data, users, split="serve"))


def test_exported_vectors_reproduce_the_model_scores(saved, tiny_data, tmp_path, capsys):
    path, model = saved
    out = tmp_path / "emb"
    assert main(["export", "--checkpoint", str(path), "--out", str(out), "--chunk", "16", "--quiet"]) == 0
    assert "exported 30 items" in capsys.readouterr().out

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["normalization"] == "l2" and manifest["dim"] == 16
    assert manifest["counts"] == {"items": tiny_data.n_items, "users": tiny_data.n_users}
    assert manifest["data"]["folder"] == str(Path(tiny_data.path).resolve())
    assert manifest["model"]["base_model"] and manifest["model"]["fingerprint"]
    items, users = np.load(out / "items.npy"), np.load(out / "users.npy")
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-5)

    # Parquet rows are the .npy rows, ids in catalogue / user order.
    item_table = pq.read_table(out / "items.parquet")
    vector_type = item_table.schema.field("vector").type
    assert pa.types.is_list(vector_type) and vector_type.value_type == pa.float32()
    assert item_table["item_id"].to_pylist() == tiny_data.items["item_id"].tolist()
    np.testing.assert_array_equal(np.stack(item_table["vector"].to_numpy(zero_copy_only=False)), items)
    user_table = pq.read_table(out / "users.parquet")
    assert user_table["user_id"].to_pylist() == tiny_data.users["user_id"].tolist()
    np.testing.assert_array_equal(np.stack(user_table["vector"].to_numpy(zero_copy_only=False)), users)

    # The retrieval score dot / temperature is the model's own score, for every item.
    exported = torch.from_numpy(users[SAMPLE_USERS] @ items.T) / manifest["temperature"]
    torch.testing.assert_close(exported, _model_scores(model, tiny_data, SAMPLE_USERS), atol=1e-4, rtol=1e-5)


def test_faiss_index_ranks_like_the_exported_vectors(saved, tiny_data, tmp_path):
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is optional")
    path, model = saved
    out = tmp_path / "emb"
    export_embeddings(
        model, tiny_data, out, users=np.array([0, 1, 2]), faiss=True, model_dir=path, progress=False
    )
    assert json.loads((out / "manifest.json").read_text())["files"]["index"] == "items.faiss"
    index = faiss.read_index(str(out / "items.faiss"))
    users, items = np.load(out / "users.npy"), np.load(out / "items.npy")
    _, found = index.search(users, 5)
    np.testing.assert_array_equal(found, np.argsort(-(users @ items.T), axis=1, kind="stable")[:, :5])


def test_without_faiss_the_manifest_says_exact_search(saved, tiny_data, tmp_path):
    path, model = saved
    out = tmp_path / "emb"
    export_embeddings(model, tiny_data, out, users=np.array([3]), chunk=64, model_dir=path, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "exact search" in manifest["index"] and manifest["files"]["index"] is None
    assert not (out / "items.faiss").exists()


class _Interrupt(Exception):
    pass


def test_interrupted_export_resumes_and_equals_a_fresh_run(saved, tiny_data, tmp_path, monkeypatch):
    path, model = saved
    kwargs = {"chunk": 16, "model_dir": path, "progress": False, "batch_size": 64}  # one model call per chunk
    real_users = model.user_embeddings
    calls = {"users": 0, "encoder": 0}

    def crash_on_second_chunk(batch):
        calls["users"] += 1
        if calls["users"] == 2:
            raise _Interrupt  # e.g. Ctrl-C or a preempted job, after the first user chunk was saved
        return real_users(batch)

    monkeypatch.setattr(model, "user_embeddings", crash_on_second_chunk)
    out = tmp_path / "emb"
    with pytest.raises(_Interrupt):
        export_embeddings(model, tiny_data, out, **kwargs)
    assert not out.exists()  # nothing half-written at the destination
    partial = tmp_path / ".emb.partial"
    assert sorted(p.name for p in partial.glob("*.npy")) == [
        "items-000000.npy",
        "items-000001.npy",
        "users-000000.npy",
    ]

    # Rerun: finished chunks are read back, not recomputed.
    real_encoder_forward = model.encoder.forward

    def counting_encoder(*args, **kw):
        calls["encoder"] += 1
        return real_encoder_forward(*args, **kw)

    def counting_users(batch):
        calls["users"] += 1
        return real_users(batch)

    calls.update(users=0, encoder=0)
    monkeypatch.setattr(model, "user_embeddings", counting_users)
    monkeypatch.setattr(model.encoder, "forward", counting_encoder)
    export_embeddings(model, tiny_data, out, **kwargs)
    assert calls["users"] == 2  # user chunks 2 and 3 of 3 (40 users, 16 per chunk)
    assert calls["encoder"] == 2  # only their windows went through the backbone: no item chunk
    assert not partial.exists()

    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    export_embeddings(model, tiny_data, fresh, **kwargs)
    for name in ("items.npy", "users.npy"):
        np.testing.assert_allclose(np.load(out / name), np.load(fresh / name), rtol=0, atol=1e-6)


def test_changed_settings_discard_the_partial_export(saved, tiny_data, tmp_path):
    path, model = saved
    partial = tmp_path / ".emb.partial"
    partial.mkdir()
    (partial / "settings.json").write_text(json.dumps({"chunk": 999}))
    np.save(partial / "items-000000.npy", np.zeros((64, 16), np.float32))  # stale, other settings
    export_embeddings(
        model, tiny_data, tmp_path / "emb", users=np.array([1]), chunk=64, model_dir=path, progress=False
    )
    assert np.abs(np.load(tmp_path / "emb" / "items.npy")).sum() > 0


def test_users_file_selects_and_orders_users(tiny_data, tmp_path):
    listing = tmp_path / "users.txt"
    listing.write_text("U005\n\n# a comment\nU002  # trailing comment\nU005\n")
    assert select_users(tiny_data, listing).tolist() == [5, 2]
    assert len(select_users(tiny_data, "all")) == tiny_data.n_users
    listing.write_text("U001\nnobody\n")
    with pytest.raises(DataError, match=r"users.txt line 2: unknown user id 'nobody'"):
        select_users(tiny_data, listing)
    with pytest.raises(DataError, match="not found"):
        select_users(tiny_data, tmp_path / "missing.txt")


def test_existing_output_needs_overwrite(saved, tiny_data, tmp_path, capsys):
    path, _ = saved
    (tmp_path / "emb").mkdir()
    code = main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "emb"), "--quiet"])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_export_refuses_data_with_another_catalogue(saved, tiny_data, tmp_path):
    path, model = saved
    smaller = PreparedData.from_frames(
        tiny_data.meta,
        tiny_data.items.iloc[:20].reset_index(drop=True),
        tiny_data.users,
        pd_events(tiny_data, max_item=20),
    )
    with pytest.raises(CheckpointError, match="30 items"):
        export_embeddings(model, smaller, tmp_path / "emb", model_dir=path, progress=False)


def pd_events(data: PreparedData, max_item: int):
    import pandas as pd

    users = np.repeat(np.arange(data.n_users), np.diff(data.offsets))
    events = pd.DataFrame(
        {
            "user_idx": users,
            "item_idx": data.seq_items,
            "timestamp": data.seq_times,
            "behavior": data.seq_behaviors,
        }
    )
    return events[events["item_idx"] < max_item]


def test_item_vectors_of_an_export_are_tied_to_the_weights(saved, tiny_data, tmp_path):
    path, model = saved
    out = tmp_path / "emb"
    export_embeddings(model, tiny_data, out, users=np.array([0]), model_dir=path, progress=False)
    vectors, manifest = load_item_vectors(out, path)
    assert vectors.shape == (tiny_data.n_items, manifest["dim"])
    other = tmp_path / "other"
    shutil.copytree(path, other)
    with (other / "seqrec_config.json").open("a") as f:
        f.write("\n")  # any change to the files that define the model
    with pytest.raises(CheckpointError, match="other weights"):
        load_item_vectors(out, other)
