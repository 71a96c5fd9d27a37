"""Incremental user updates and `seqrec recommend`.

The incremental path is checked against the ordinary one: a user whose last events are held back
from the data and then appended incrementally must get the vector that the regular data pipeline
(dataset + collator + backbone on every window) computes from the full history.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.cli import main
from seqrec.data.schema import DataError, PreparedData
from seqrec.modeling import SeqRecModel
from seqrec.serving.incremental import Catalogue, Event, IncrementalEncoder, UserStateCache, read_events
from seqrec.serving.recommend import Recommender
from tests.conftest import make_tiny_frames
from tests.tiny_models import (  # noqa: F401  (fixtures)
    item_tokens,
    make_batch,
    single_thread,
    tiny_backbones_fixture,
    tiny_run_config,
    torch_single_thread_fixture,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(autouse=True)
def seqrec_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SEQREC_CACHE", str(tmp_path_factory.getbasetemp() / "seqrec-cache"))


@pytest.fixture(scope="module")
def saved(tiny_backbones, tiny_data, tiny_data_dir, tmp_path_factory) -> tuple[Path, SeqRecModel]:
    """A tiny LoRA model after one optimizer step, saved with its data_dir."""
    with single_thread():
        torch.manual_seed(0)
        # 32 time buckets: the tiny default (8) caps every gap of a minute or more into one bucket,
        # which would hide window times from the aggregator.
        overrides = {"train.lr": 0.05, "train.backbone_lr": 0.05, "model.aggregator.time_buckets": 32}
        cfg = tiny_run_config(tiny_backbones("llama"), **overrides)
        cfg.data_dir = str(tiny_data_dir)
        model = SeqRecModel.from_data(cfg, tiny_data)
        model.build_item_cache(item_tokens(model, tiny_data))
        opt = torch.optim.AdamW(model.param_groups(model.cfg.train))
        model.train()
        model(make_batch(model, tiny_data, [0, 1, 2, 3])).loss.backward()
        opt.step()
        model.on_step_end(1)
        model.eval()
        path = tmp_path_factory.mktemp("recommend") / "model"
        model.save_pretrained(path)
        return path, model


def held_back(data: PreparedData, n_last: int) -> tuple[PreparedData, dict[int, list[Event]]]:
    """The tiny data without each user's last `n_last` events, and those events per user."""
    frames = make_tiny_frames()
    events = frames["events"]
    position = events.groupby("user_idx").cumcount()
    length = events.groupby("user_idx")["item_idx"].transform("size")
    keep = position < length - n_last
    later: dict[int, list[Event]] = {}
    for row in events[~keep].itertuples():
        later.setdefault(int(row.user_idx), []).append(
            Event(int(row.item_idx), int(row.behavior), int(row.timestamp))
        )
    frames["events"] = events[keep].reset_index(drop=True)
    short = PreparedData.from_frames(**frames)
    short.path = Path("held-back")
    assert short.n_items == data.n_items and short.n_users == data.n_users
    return short, later


def count_encoded_texts(model: SeqRecModel, monkeypatch) -> list[list[str]]:
    """Record every list of texts the model sends through its backbone via encode_texts."""
    calls: list[list[str]] = []
    real = model.encode_texts

    def counting(texts, kind="window", batch_size=64):
        calls.append(list(texts))
        return real(texts, kind, batch_size)

    monkeypatch.setattr(model, "encode_texts", counting)
    return calls


def full_pipeline(
    model: SeqRecModel, data: PreparedData, users: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """User vectors [B, D] and last-state attention [B, W, W] from the regular serve batches."""
    batch = make_batch(model, data, users, split="serve")
    with torch.no_grad():
        out = model(batch)
    return out.user_emb, out.attn


# ---- incremental updates ---------------------------------------------------------------------------


def test_one_new_event_reencodes_one_window_and_equals_full_recomputation(saved, tiny_data, monkeypatch):
    _, model = saved
    short, later = held_back(tiny_data, n_last=1)
    users = list(range(12))
    full_vectors, full_attn = full_pipeline(model, tiny_data, users)
    enc = IncrementalEncoder(model, short)
    calls = count_encoded_texts(model, monkeypatch)
    cases = set()
    for b, u in enumerate(users):
        uid = f"U{u:03d}"
        before = enc.encode(uid)
        assert before.encoded == len(before.windows) and len(calls[-1]) == before.encoded
        after = enc.update(uid, later[u])
        assert after.encoded == 1 and calls[-1] == [after.texts[-1]]  # only the newest window
        torch.testing.assert_close(after.vector, full_vectors[b], atol=1e-5, rtol=0)
        w = len(after.windows)
        torch.testing.assert_close(after.attention, full_attn[b, w - 1, :w], atol=1e-5, rtol=0)
        grew = after.windows[-1].start == before.windows[-1].start  # else a new window opened
        cases.add("last window grew" if grew else "new window")
    assert cases == {"last window grew", "new window"}  # both kinds of update were exercised


def test_several_events_reencode_exactly_the_changed_windows(saved, tiny_data, monkeypatch):
    _, model = saved
    short, later = held_back(tiny_data, n_last=4)
    users = [0, 5, 11]
    full_vectors, _ = full_pipeline(model, tiny_data, users)
    enc = IncrementalEncoder(model, short)
    calls = count_encoded_texts(model, monkeypatch)
    for b, u in enumerate(users):
        uid = f"U{u:03d}"
        before = {(w.start, w.end) for w in enc.encode(uid).windows}
        after = enc.update(uid, later[u])
        changed = [(w.start, w.end) for w in after.windows if (w.start, w.end) not in before]
        assert after.encoded == len(changed) == len(calls[-1]) >= 1
        torch.testing.assert_close(after.vector, full_vectors[b], atol=1e-5, rtol=0)
        # One event at a time gives the same vector as all at once.
        one_by_one = IncrementalEncoder(model, short)
        for event in later[u]:
            step = one_by_one.update(uid, [event])
        torch.testing.assert_close(step.vector, after.vector, atol=1e-5, rtol=0)


def test_a_request_without_new_events_costs_no_backbone_call(saved, tiny_data, monkeypatch):
    _, model = saved
    enc = IncrementalEncoder(model, tiny_data)
    first = enc.encode("U003")
    calls = count_encoded_texts(model, monkeypatch)
    again, updated = enc.encode("U003"), enc.update("U003", [])
    assert calls == [] and again.encoded == updated.encoded == 0
    assert torch.equal(again.vector, first.vector)
    recomputed = enc.recompute("U003")
    assert recomputed.encoded == len(first.windows)
    torch.testing.assert_close(recomputed.vector, first.vector, atol=1e-6, rtol=0)


def test_state_cache_is_bounded_and_events_are_validated(saved, tiny_data):
    _, model = saved
    enc = IncrementalEncoder(model, tiny_data, UserStateCache(max_users=2))
    for uid in ("U000", "U001", "U002"):
        enc.encode(uid)
    assert len(enc.cache) == 2 and "U000" not in enc.cache
    last = int(tiny_data.sequence(1)[1][-1])
    with pytest.raises(DataError, match="earlier than the user's last event"):
        enc.update("U001", [Event(0, 0, last - 1)])
    with pytest.raises(DataError, match="outside the catalogue"):
        enc.update("U001", [Event(tiny_data.n_items, 0, last)])
    with pytest.raises(DataError, match="'nobody' is not in"):
        enc.encode("nobody")
    # A user the data does not know starts from the given events (cold start).
    cold = enc.update("nobody", [Event(3, 1, last), Event(6, 3, last + 60)], allow_new=True)
    assert cold.cold_start and len(cold.windows) == 1 and cold.encoded == 1


def test_align_end_shifts_windows_and_stays_correct(saved, tiny_data):
    """With align=end every window moves when an event arrives; the cache must not reuse stale ones."""
    _, model = saved
    original = model.cfg.window.align
    model.cfg.window.align = "end"
    try:
        short, later = held_back(tiny_data, n_last=1)
        full_vectors, _ = full_pipeline(model, tiny_data, [4])
        enc = IncrementalEncoder(model, short)
        enc.encode("U004")
        after = enc.update("U004", later[4])
        assert after.encoded == len(after.windows)  # every window moved by one event
        torch.testing.assert_close(after.vector, full_vectors[0], atol=1e-5, rtol=0)
    finally:
        model.cfg.window.align = original


# ---- events files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"item_id": "NOPE", "behavior": "view", "timestamp": 1800000000}', "unknown item_id 'NOPE'"),
        (
            '{"item_id": "I001", "behavior": "teleport", "timestamp": 1800000000}',
            "unknown behavior 'teleport'",
        ),
        (
            '{"item_id": "I001", "behavior": "view", "timestamp": 1000}',
            "earlier than the user's last known event",
        ),
        ('{"item_id": "I001", "behavior": "view"}', "missing field"),
        ('{"item_id": "I001", "behavior": "view", "timestamp": "yesterday"}', "not unix seconds or an ISO"),
        ("not json", "Expecting value"),
    ],
)
def test_bad_event_lines_are_named(tiny_data, tmp_path, line, message):
    path = tmp_path / "new.jsonl"
    path.write_text('{"item_id": "I002", "behavior": "buy", "timestamp": 1800000000}\n\n' + line + "\n")
    last = int(tiny_data.sequence(0)[1][-1])
    with pytest.raises(DataError, match=f"new.jsonl line 3: .*{message}"):
        read_events(path, Catalogue(tiny_data), "U000", after=last)


def test_event_lines_accept_iso_times_and_mapped_behaviours(tiny_data, tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text(
        '{"item_id": "I002", "behavior": "pv", "timestamp": "2030-01-01T00:00:00Z"}\n'
        '{"item_id": "I003", "behavior": "buy", "timestamp": 1893456000, "user_id": "U000"}\n'
    )
    events = read_events(path, Catalogue(tiny_data, {"pv": "view"}), "U000")
    assert events == [Event(2, 0, 1893456000), Event(3, 3, 1893456000)]


# ---- recommend ---------------------------------------------------------------------------------------


def _recommend(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["recommend", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_recommend_json_excludes_seen_items_and_matches_model_scores(saved, tiny_data, capsys):
    path, model = saved
    code, out, _ = _recommend(["--checkpoint", str(path), "--user", "U007", "--k", "5", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    history = set(tiny_data.sequence(7)[0].tolist())
    ranked = [r["item_idx"] for r in result["items"]]
    assert len(ranked) == 5 and not history & set(ranked)
    assert [r["rank"] for r in result["items"]] == [1, 2, 3, 4, 5]
    model.prepare_eval()
    with torch.no_grad():
        scores = model.score_batch(make_batch(model, tiny_data, [7], split="serve"))[0]
    scores[list(history)] = float("-inf")
    top = torch.topk(scores, 5)
    assert ranked == top.indices.tolist()
    np.testing.assert_allclose([r["score"] for r in result["items"]], top.values.numpy(), atol=1e-4)
    weights = [w["weight"] for w in result["windows"]]
    assert pytest.approx(sum(weights), abs=1e-5) == 1.0
    top_window = [w for w in result["windows"] if w["top"]]
    assert len(top_window) == 1 and top_window[0]["weight"] == max(weights)
    assert [e["position"] for e in top_window[0]["events"]] == list(
        range(top_window[0]["start"], top_window[0]["end"])
    )


def test_recommend_with_new_events_and_include_seen(saved, tiny_data, tmp_path, capsys):
    path, _ = saved
    last = int(tiny_data.sequence(2)[1][-1])
    events = tmp_path / "new.jsonl"
    events.write_text(
        json.dumps({"item_id": "I004", "behavior": "buy", "timestamp": last + 10})
        + "\n"
        + json.dumps({"item_id": "I017", "behavior": "view", "timestamp": last + 20})
        + "\n"
    )
    args = ["--checkpoint", str(path), "--user", "U002", "--events", str(events), "--k", "30", "--json"]
    code, out, _ = _recommend(args, capsys)
    result = json.loads(out)
    assert code == 0 and result["new_events"] == 2 and result["windows_encoded"] >= 1
    seen = set(tiny_data.sequence(2)[0].tolist()) | {4, 17}
    assert not seen & {r["item_idx"] for r in result["items"]}
    assert len(result["items"]) == tiny_data.n_items - len(seen)  # k larger than what is left
    code, out, _ = _recommend([*args, "--include-seen"], capsys)
    assert len(json.loads(out)["items"]) == 30


def test_recommend_table_and_user_errors(saved, tmp_path, capsys):
    path, _ = saved
    code, out, _ = _recommend(["--checkpoint", str(path), "--user", "U001", "--k", "3"], capsys)
    assert code == 0 and "Top 3 items for user U001" in out and "Why:" in out and "Window " in out
    code, _, err = _recommend(["--checkpoint", str(path), "--user", "nobody"], capsys)
    assert code == 2 and "'nobody' is not in" in err
    events = tmp_path / "new.jsonl"
    events.write_text('{"item_id": "I001", "behavior": "view", "timestamp": 1800000000}\n')
    code, out, _ = _recommend(
        ["--checkpoint", str(path), "--user", "nobody", "--events", str(events), "--json"], capsys
    )
    assert code == 0 and json.loads(out)["cold_start"] is True
    events.write_text('{"item_id": "I001", "behavior": "view", "timestamp": 1800000000}\n{"item_id": "X"}\n')
    code, _, err = _recommend(["--checkpoint", str(path), "--user", "U001", "--events", str(events)], capsys)
    assert code == 2 and "new.jsonl line 2" in err


def test_recommender_reuses_exported_item_vectors(saved, tiny_data, tmp_path):
    path, model = saved
    from seqrec.serving.export import export_embeddings

    export_embeddings(model, tiny_data, tmp_path / "emb", users=np.array([0]), model_dir=path, progress=False)
    fresh = Recommender(model, tiny_data).recommend("U009", k=4)
    reused = Recommender.from_checkpoint(path, embeddings=tmp_path / "emb").recommend("U009", k=4)
    assert [r.item_id for r in reused.items] == [r.item_id for r in fresh.items]
    np.testing.assert_allclose([r.score for r in reused.items], [r.score for r in fresh.items], atol=1e-4)
