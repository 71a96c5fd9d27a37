"""SASRec (full cross-entropy): leakage-safe sequences, causality, learning, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqrec.baselines.popularity import PopularityModel
from seqrec.baselines.sasrec import SASRec
from seqrec.baselines.sequences import (
    EvalSequences,
    TrainSequences,
    collate_eval,
    collate_train,
    eval_loader,
    train_loader,
)
from seqrec.config import EvalConfig, SASRecConfig
from seqrec.data.schema import PreparedData
from seqrec.errors import CheckpointError
from seqrec.evaluation.evaluator import evaluate
from seqrec.manifest import seal_model_folder

TINY = SASRecConfig(d_model=32, layers=1, heads=2, dropout=0.1, max_len=20)


def fit_sasrec(
    model: SASRec, data: PreparedData, epochs: int, lr: float = 3e-3, batch_size: int = 8, seed: int = 0
) -> list[float]:
    """TEST HELPER, not the library's training loop (that is seqrec/training): plain AdamW epochs."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only add contention on a shared CPU
    try:
        for epoch in range(epochs):
            for batch in train_loader(data, model.cfg.max_len, batch_size, seed=seed + epoch):
                loss = model(batch).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    return losses


# ---- sequences -----------------------------------------------------------------------------


def test_training_sequences_stay_inside_the_training_part(tiny_data: PreparedData) -> None:
    ds = TrainSequences(tiny_data, max_len=6)
    batch = collate_train([ds[i] for i in range(len(ds))])
    inputs, targets = batch["input_items"], batch["target_items"]  # [B, T], item + 1, 0 = padding
    assert inputs.shape == targets.shape and inputs.shape[1] <= 6
    for b, u in enumerate(batch["user_idx"].tolist()):
        items, _, _ = tiny_data.sequence(u)
        train = items[: tiny_data.input_end(u, "train")]
        real = targets[b] > 0
        assert (targets[b][real] - 1).tolist() == train[1:][-6:].tolist()  # the next items, train part only
        assert (inputs[b][real] - 1).tolist() == train[:-1][-6:].tolist()
        assert ((inputs[b] > 0) == real).all()  # left padded, aligned
        assert not real[-1:].logical_not().any()  # the newest slot is real


def test_eval_sequences_end_before_the_target(tiny_data: PreparedData) -> None:
    for split in ("valid", "test"):
        ds = EvalSequences(tiny_data, split, max_len=4)
        batch = collate_eval([ds[i] for i in range(len(ds))])
        for b, u in enumerate(batch["user_idx"].tolist()):
            items, _, _ = tiny_data.sequence(u)
            pos = tiny_data.input_end(u, split)  # type: ignore[arg-type]
            assert batch["eval_target"][b].item() == items[pos]
            row = batch["input_items"][b]
            assert (row[row > 0] - 1).tolist() == items[:pos][-4:].tolist()
            hist = batch["history_items"][b]
            assert sorted(hist[hist >= 0].tolist()) == sorted(set(items[:pos].tolist()))  # whole input


# ---- model ---------------------------------------------------------------------------------


def test_initial_loss_is_near_uniform_and_score_shape(tiny_data: PreparedData) -> None:
    torch.manual_seed(0)
    model = SASRec(tiny_data.n_items, TINY).eval()
    batch = next(iter(train_loader(tiny_data, TINY.max_len, 8)))
    out = model(batch)
    assert out.n_targets.item() == int((batch["target_items"] > 0).sum())
    assert abs(out.loss.item() - math.log(tiny_data.n_items)) < 0.5  # small init: close to uniform
    scores = model.score_batch(next(iter(eval_loader(tiny_data, "valid", TINY.max_len, 5))))
    assert scores.shape == (5, tiny_data.n_items) and torch.isfinite(scores).all()


def test_loss_is_full_softmax_cross_entropy(tiny_data: PreparedData) -> None:
    torch.manual_seed(0)
    model = SASRec(tiny_data.n_items, TINY).eval()
    batch = next(iter(train_loader(tiny_data, TINY.max_len, 4)))
    hidden = model.encode(batch["input_items"])  # [B, T, D]
    table = model.item_emb.weight[1:]  # [N, D]
    real = batch["target_items"] > 0
    expected = F.cross_entropy(hidden[real] @ table.T, batch["target_items"][real] - 1)
    assert model(batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_causal_and_padding_invariant() -> None:
    torch.manual_seed(0)
    model = SASRec(10, SASRecConfig(d_model=16, layers=2, heads=2, dropout=0.0, max_len=8)).eval()
    seq = torch.tensor([[3, 5, 2, 7]])
    padded = torch.tensor([[0, 0, 0, 3, 5, 2, 7]])
    h, hp = model.encode(seq), model.encode(padded)
    assert torch.allclose(h, hp[:, 3:], atol=1e-5)  # left padding changes nothing
    changed = model.encode(torch.tensor([[3, 5, 2, 9]]))
    assert torch.allclose(h[:, :3], changed[:, :3], atol=1e-6)  # the future is not seen
    assert not torch.allclose(h[:, 3], changed[:, 3])
    long = torch.randint(1, 11, (2, 20))  # longer than max_len: only the newest 8 are used
    assert torch.allclose(
        model.score_batch({"input_items": long}), model.score_batch({"input_items": long[:, -8:]})
    )


@pytest.mark.slow
def test_learns_the_tiny_set_and_beats_popularity(tiny_data: PreparedData) -> None:
    torch.manual_seed(0)
    model = SASRec(tiny_data.n_items, TINY)
    losses = fit_sasrec(model, tiny_data, epochs=15)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    cfg = EvalConfig(ks=[10])
    sasrec = evaluate(
        model, eval_loader(tiny_data, "valid", TINY.max_len), tiny_data, "valid", cfg, progress=False
    )
    pop = evaluate(
        PopularityModel.fit(tiny_data),
        eval_loader(tiny_data, "valid", 1),
        tiny_data,
        "valid",
        cfg,
        progress=False,
    )
    # The tiny set's signal (each user sticks to one category) is invisible to popularity.
    assert sasrec.metrics["ndcg@10"] > pop.metrics["ndcg@10"] + 0.1, (sasrec.metrics, pop.metrics)


def test_save_and_load_give_identical_scores(tiny_data: PreparedData, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SASRec(tiny_data.n_items, TINY)
    fit_sasrec(model, tiny_data, epochs=1)
    model.eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "seqrec_config.json",
    ]
    loaded = SASRec.from_pretrained(tmp_path / "m").eval()
    assert loaded.cfg == model.cfg
    batch = next(iter(eval_loader(tiny_data, "test", TINY.max_len, 16)))
    assert torch.equal(model.score_batch(batch), loaded.score_batch(batch))

    wrong = SASRec(tiny_data.n_items, TINY)
    wrong.save_pretrained(tmp_path / "w")
    cfg_file = tmp_path / "w" / "seqrec_config.json"
    cfg_file.write_text(cfg_file.read_text().replace('"d_model": 32', '"d_model": 16'))
    with pytest.raises(CheckpointError, match=r"seqrec_config\.json does not match its sha256"):
        SASRec.from_pretrained(tmp_path / "w")
    seal_model_folder(tmp_path / "w")  # consistent files, but weights of another width
    with pytest.raises(CheckpointError, match="do not match"):
        SASRec.from_pretrained(tmp_path / "w")
    PopularityModel.fit(tiny_data).save_pretrained(tmp_path / "p")
    with pytest.raises(CheckpointError, match="holds a 'popularity' model"):
        SASRec.from_pretrained(tmp_path / "p")


@pytest.mark.slow
def test_beats_popularity_on_the_synthetic_set(tmp_path: Path) -> None:
    synth = pytest.importorskip("seqrec.data.synth")
    synth.synth(tmp_path / "synth", synth.SynthConfig(n_users=200, n_items=120, seed=1), progress=False)
    data = PreparedData.load(tmp_path / "synth")
    torch.manual_seed(0)
    model = SASRec(data.n_items, SASRecConfig(d_model=32, layers=1, heads=1, dropout=0.1, max_len=20))
    fit_sasrec(model, data, epochs=10, batch_size=32)
    cfg = EvalConfig(ks=[10])
    sasrec = evaluate(model, eval_loader(data, "valid", 20), data, "valid", cfg, progress=False)
    pop = evaluate(
        PopularityModel.fit(data), eval_loader(data, "valid", 1), data, "valid", cfg, progress=False
    )
    # The generator's signal (related items follow each other) is sequential; popularity cannot see it.
    assert sasrec.metrics["ndcg@10"] > 2 * pop.metrics["ndcg@10"], (sasrec.metrics, pop.metrics)
