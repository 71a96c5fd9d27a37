"""The composite SeqRecModel on tiny backbones: parameters, invariants, losses, item cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.config import ConfigError
from seqrec.modeling import SeqRecModel
from tests.tiny_models import (  # noqa: F401  (fixtures)
    item_tokens,
    make_batch,
    tiny_backbones_fixture,
    tiny_run_config,
    torch_single_thread_fixture,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

USERS = [0, 1, 2, 3, 4, 5]


def _model(tiny_backbones, tiny_data, arch="llama", build_cache=True, **overrides) -> SeqRecModel:
    torch.manual_seed(0)
    model = SeqRecModel.from_data(tiny_run_config(tiny_backbones(arch), **overrides), tiny_data)
    if build_cache:
        model.build_item_cache(item_tokens(model, tiny_data))
    return model


def _head_stage(tiny_data, hidden=12, **overrides) -> SeqRecModel:
    torch.manual_seed(0)
    cfg = tiny_run_config("unused", **{"model.backbone.hidden_size": hidden, **overrides})
    model = SeqRecModel.from_data(cfg, tiny_data, load_backbone=False)
    model.set_item_features(torch.nn.functional.normalize(torch.randn(tiny_data.n_items, hidden), dim=-1))
    return model


def _feature_batch(model: SeqRecModel, tiny_data, users, seed=0) -> dict:
    """A head-stage batch: the joint batch layout with random window features."""
    from seqrec.data.collate import SeqRecCollator
    from seqrec.data.examples import make_input, split_end
    from seqrec.data.features import FeatureStore

    gen = torch.Generator().manual_seed(seed)
    inputs = [make_input(tiny_data, u, split_end(tiny_data, u, "train"), model.cfg.window) for u in users]
    keys = [(inp.user_idx, w.start, w.end) for inp in inputs for w in inp.windows]
    feats = torch.nn.functional.normalize(torch.randn(len(keys), model.feature_dim, generator=gen), dim=-1)
    store = FeatureStore.from_keys(feats, model.item_features.cpu(), keys)
    collate = SeqRecCollator(tiny_data, model.cfg, "train", features=store)
    return collate([{"input": inp, "feature_rows": store.rows(inp.user_idx, inp.windows)} for inp in inputs])


# ---- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "bert"])
def test_trainable_params_are_adapters_plus_head_and_base_stays_fixed(tiny_backbones, tiny_data, arch):
    model = _model(tiny_backbones, tiny_data, arch)
    backbone_names = {f"encoder.backbone.{n}" for n, _ in model.encoder.backbone.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    for name in trainable & backbone_names:
        assert "lora_" in name, f"base weight {name} is trainable"
    assert any("lora_" in n for n in trainable)
    head = trainable - backbone_names
    assert head == {n for n, _ in model.named_parameters() if not n.startswith("encoder.")}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.param_groups(model.cfg.train))
    model.train()
    out = model(make_batch(model, tiny_data, USERS))
    out.loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in backbone_names and "lora_" not in n:
            assert torch.equal(p, before[n]), f"base weight {n} changed"
    # lora_B starts at zero; after one step it moves, so gradients reached the adapters.
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)
    assert out.metrics["nonpad_tokens"] <= out.metrics["tokens"] and out.metrics["nonpad_tokens"] > 0


def test_param_groups_split_learning_rates_and_weight_decay(tiny_backbones, tiny_data):
    model = _model(tiny_backbones, tiny_data, build_cache=False)
    cfg = model.cfg.train
    groups = {g["name"]: g for g in model.param_groups(cfg)}
    assert groups["backbone"]["lr"] == cfg.backbone_lr and groups["head"]["lr"] == cfg.lr
    assert groups["head_no_decay"]["weight_decay"] == 0.0
    no_decay = {id(p) for p in groups["head_no_decay"]["params"]}
    assert id(model.item_tower.ids.weight) in no_decay  # embedding table
    assert id(model.aggregator.ln_f.weight) in no_decay and id(model.aggregator.proj.bias) in no_decay
    assert id(model.aggregator.proj.weight) not in no_decay
    n_grouped = sum(len(g["params"]) for g in groups.values())
    assert n_grouped == sum(1 for p in model.parameters() if p.requires_grad)


def test_frozen_full_and_dora(tiny_backbones, tiny_data):
    frozen = _model(tiny_backbones, tiny_data, build_cache=False, **{"model.adapter.method": "frozen"})
    assert not any(p.requires_grad for p in frozen.encoder.backbone.parameters())
    assert all(g["name"].startswith("head") for g in frozen.param_groups(frozen.cfg.train))
    full = _model(tiny_backbones, tiny_data, "bert", build_cache=False, **{"model.adapter.method": "full"})
    assert all(p.requires_grad for p in full.encoder.backbone.parameters())
    dora = _model(tiny_backbones, tiny_data, build_cache=False, **{"model.adapter.method": "dora"})
    assert any("lora_magnitude_vector" in n for n, p in dora.named_parameters() if p.requires_grad)


def test_head_stage_has_no_backbone_and_needs_the_feature_width(tiny_data):
    with pytest.raises(ConfigError, match="hidden_size"):
        SeqRecModel.from_data(tiny_run_config("unused"), tiny_data, load_backbone=False)
    model = _head_stage(tiny_data)
    assert model.encoder is None and model.tokenizer is None
    with pytest.raises(ValueError, match="item features must be"):
        model.set_item_features(torch.zeros(3, 12))


# ---- invariants -----------------------------------------------------------------------------------


def test_user_embedding_independent_of_batch_mates_and_padding_side(tiny_backbones, tiny_data):
    model = _model(tiny_backbones, tiny_data, "qwen2").eval()
    with torch.no_grad():
        together = model.user_embeddings(make_batch(model, tiny_data, [3, 7, 11], split="valid"))
        alone = model.user_embeddings(make_batch(model, tiny_data, [7], split="valid"))
        batch = make_batch(model, tiny_data, [3, 7, 11], split="valid")
        ids, mask = batch["window_input_ids"], batch["window_attention_mask"]
        lengths = mask.sum(1)
        left_ids, left_mask = torch.full_like(ids, model.tokenizer.pad_token_id), torch.zeros_like(mask)
        for i, n in enumerate(lengths.tolist()):
            left_ids[i, -n:], left_mask[i, -n:] = ids[i, :n], 1
        left = model.user_embeddings(
            {**batch, "window_input_ids": left_ids, "window_attention_mask": left_mask}
        )
    torch.testing.assert_close(together[1], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together, left, atol=1e-5, rtol=1e-4)


def test_window_state_j_ignores_later_windows_in_the_full_model(tiny_data):
    model = _head_stage(tiny_data).eval()
    batch = _feature_batch(model, tiny_data, USERS)
    n_windows = batch["window_mask"].sum(1)
    b = int(torch.argmax(n_windows))
    assert n_windows[b] >= 3
    changed = {k: v.clone() for k, v in batch.items()}
    later = batch["window_index"][b, 1:][batch["window_index"][b, 1:] >= 0]
    changed["window_features"][later] = torch.randn(len(later), model.feature_dim)
    changed["window_time"][b, 1:] += 1e6
    with torch.no_grad():
        a = model(batch).window_states[b]
        c = model(changed).window_states[b]
    torch.testing.assert_close(a[0], c[0])
    assert not torch.allclose(a[1], c[1])


# ---- losses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_loss_falls_on_a_fixed_batch_head_stage(tiny_data, loss):
    model = _head_stage(
        tiny_data, **{"model.head.loss": loss, "model.head.num_negatives": 16, "model.head.pointwise": True}
    )
    batch = _feature_batch(model, tiny_data, list(range(12)))
    opt = torch.optim.AdamW(model.param_groups(model.cfg.train))
    model.train()
    losses = []
    torch.manual_seed(0)
    for _ in range(25):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])
    assert "loss_pointwise" in out.metrics


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_loss_falls_on_a_fixed_batch_joint_stage(tiny_backbones, tiny_data, loss):
    model = _model(tiny_backbones, tiny_data, "bert", **{"model.head.loss": loss, "train.lr": 0.01})
    batch = make_batch(model, tiny_data, USERS)
    opt = torch.optim.AdamW(model.param_groups(model.cfg.train))
    model.train()
    losses = []
    for _ in range(8):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


def test_batch_without_targets_has_no_loss_and_scores_cover_the_catalogue(tiny_data):
    model = _head_stage(tiny_data).eval()
    batch = _feature_batch(model, tiny_data, [0, 1])
    del batch["target_items"], batch["target_weights"]
    assert model(batch).loss is None
    scores = model.score_batch(batch)
    assert scores.shape == (2, tiny_data.n_items) and torch.isfinite(scores).all()
    # score = user . item / temperature
    expected = model.user_embeddings(batch) @ model.item_embeddings().T / model.cfg.model.head.temperature
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)


# ---- item tower and cache -----------------------------------------------------------------------


def test_cold_items_get_finite_text_embeddings(tiny_backbones, tiny_data):
    counts = tiny_data.train_item_counts()
    model = _model(tiny_backbones, tiny_data, "bert", **{"model.items.mode": "text"})
    counts[:] = 0  # pretend nothing was seen: text mode still gives every item a vector
    model.set_item_prior(counts)
    items = model.item_embeddings()
    assert items.shape == (tiny_data.n_items, model.cfg.model.head.dim) and torch.isfinite(items).all()
    torch.testing.assert_close(items.norm(dim=-1), torch.ones(tiny_data.n_items))
    assert torch.linalg.matrix_rank(items) > 1  # texts differ, so vectors differ


def test_live_item_features_carry_gradient_and_cache_refreshes_on_schedule(tiny_backbones, tiny_data):
    model = _model(
        tiny_backbones,
        tiny_data,
        "llama",
        **{"model.items.cache_refresh_steps": 2, "train.lr": 0.05, "model.items.live_positives": True},
    )
    batch = make_batch(model, tiny_data, USERS)
    assert "item_input_ids" in batch
    model.train()
    out = model(batch)
    assert out.metrics["texts"] == batch["window_input_ids"].shape[0] + len(batch["item_live_idx"])
    out.loss.backward()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    opt.step()
    cache = model.item_features.clone()
    model.on_step_end(1)
    assert torch.equal(model.item_features, cache)  # not yet due
    model.on_step_end(2)
    assert not torch.equal(model.item_features, cache)  # re-encoded with the updated adapters


def test_prepare_eval_rebuilds_a_stale_cache(tiny_backbones, tiny_data):
    model = _model(tiny_backbones, tiny_data, "bert", **{"model.items.cache_refresh_steps": 0})
    cache = model.item_features.clone()
    with torch.no_grad():
        for p in model.encoder.backbone.parameters():
            if p.requires_grad:
                p.add_(0.1)
    model.on_step_end(1)
    assert torch.equal(model.item_features, cache)  # refresh off during training
    model.eval()
    model.prepare_eval()
    assert not torch.equal(model.item_features, cache)


def test_encode_texts_applies_prefix_and_matches_the_batch_path(tiny_backbones, tiny_data):
    model = _model(tiny_backbones, tiny_data, "bert", build_cache=False).eval()
    batch = make_batch(model, tiny_data, [0], split="valid")
    from seqrec.data.examples import make_input, make_renderer, render_windows, split_end

    inp = make_input(tiny_data, 0, split_end(tiny_data, 0, "valid"), model.cfg.window)
    texts = render_windows(tiny_data, make_renderer(tiny_data, model.cfg), 0, inp.windows)
    with torch.no_grad():
        via_batch = model.encode_windows(batch)
    via_texts = model.encode_texts(texts, kind="window")
    order = batch["window_index"][0][batch["window_mask"][0]]
    torch.testing.assert_close(via_texts, via_batch[order], atol=1e-5, rtol=1e-4)
    twice = model.encode_texts([texts[0], texts[0]])
    torch.testing.assert_close(twice[0], twice[1])
    model.cfg.model.encoder.window_prefix = "summarize the shopper interests: "
    assert not torch.allclose(model.encode_texts(texts[:1]), via_texts[:1])


def test_profile_switch_removes_the_profile_path(tiny_data):
    on = _head_stage(tiny_data)
    off = _head_stage(tiny_data, **{"model.profile.enabled": False})
    assert on.profile is not None and off.profile is None
    assert not any(n.startswith("profile.") for n, _ in off.named_parameters())
    batch = _feature_batch(off, tiny_data, [0, 1])
    assert off(batch).user_emb.shape == (2, off.cfg.model.head.dim)


def test_id_mode_and_item_ids_in_aggregator(tiny_data):
    model = _head_stage(tiny_data, **{"model.items.mode": "id", "model.aggregator.use_item_ids": True})
    assert model.item_tower.text_proj is None and model.aggregator.id_proj is not None
    batch = _feature_batch(model, tiny_data, USERS)
    out = model(batch)
    out.loss.backward()
    assert model.item_tower.ids.weight.grad is not None
    scores = model.pointwise_scores(out.user_emb.detach(), torch.arange(5)) if model.head.pointwise else None
    assert scores is None


def test_gradient_checkpointing_still_trains_the_adapters(tiny_backbones, tiny_data):
    model = _model(tiny_backbones, tiny_data, "llama", **{"model.backbone.gradient_checkpointing": True})
    assert model.encoder.backbone.base_model.model.is_gradient_checkpointing
    model.train()
    model(make_batch(model, tiny_data, USERS[:3])).loss.backward()
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
