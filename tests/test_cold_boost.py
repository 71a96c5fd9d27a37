"""model.items.cold_boost: new items raised by a share of each user's score spread, the value chosen
on validation after training and carried by the saved model into evaluate and recommend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import ConfigError, DataConfig
from seqrec.data.synth import SynthConfig, synth
from seqrec.training.cold_boost import pick
from tests.test_reliability_models import tiny_yaml
from tests.test_training_loop import fresh_accelerate_state  # noqa: F401  (autouse fixture)
from tests.tiny_models import tiny_backbones_fixture  # noqa: F401  (fixture)


def _row(boost: float, ndcg: float, ratio: float | None) -> dict:
    return {"boost": boost, "metrics": {"ndcg@10": ndcg}, "cold_over_warm": ratio}


def test_pick_prefers_the_best_metric_among_rows_meeting_the_ratio() -> None:
    table = [_row(0.0, 0.30, 0.1), _row(0.5, 0.28, 0.6), _row(1.0, 0.20, 0.9), _row(2.0, 0.28, 1.5)]
    assert pick(table, "ndcg@10", 0.0)["boost"] == 0.0  # no constraint: plain best
    assert pick(table, "ndcg@10", 0.5)["boost"] == 0.5  # ties on the metric: the smaller boost
    assert pick(table, "ndcg@10", 1.0)["boost"] == 2.0
    assert pick(table, "ndcg@10", 9.0)["boost"] == 2.0  # none reaches it: the highest ratio


@pytest.fixture(scope="module")
def cold_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cold") / "data"
    synth(
        out, SynthConfig(n_users=80, n_items=40, mean_events=8), DataConfig(cold_items=0.25), progress=False
    )
    return out


def test_training_chooses_the_boost_on_validation_and_the_saved_model_uses_it(
    cold_data: Path, tiny_backbones, tmp_path: Path
) -> None:
    from seqrec.cli import main
    from seqrec.data.schema import PreparedData
    from seqrec.evaluation.cli import evaluate_checkpoint
    from seqrec.modeling import SeqRecModel
    from seqrec.serving.recommend import Recommender

    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = ["train", "--config", str(tiny_yaml(tiny_backbones("bert"), tmp_path)), "--data", str(cold_data)]
    # A ratio no value reaches: the rule falls back to the highest cold/warm ratio, i.e. a boost > 0.
    grid = ["model.items.cold_boost_grid=[0.0,0.5,50.0]", "model.items.cold_boost_min_ratio=1000"]
    assert main([*args, "--output", str(out), "--stage", "head", *grid, "train.eval_max_users=0"]) == 0
    spec = json.loads((out / "best" / "cold_boost.json").read_text())
    assert [r["boost"] for r in spec["grid"]] == [0.0, 0.5, 50.0]
    assert all(r["cold_over_warm"] is not None for r in spec["grid"])  # validation has new-item targets
    assert spec["chosen"] == pick(spec["grid"], "ndcg@10", 1000)["boost"] > 0
    data = PreparedData.load(cold_data)
    cold = data.train_item_counts() == 0
    assert cold.any()
    # The saved folder (manifest re-sealed) carries the choice, and evaluating it on validation
    # reproduces the figure the choice was made on.
    model = SeqRecModel.from_pretrained(out / "best", load_backbone=False)
    assert model.spec.model.items.cold_boost == spec["chosen"]
    chosen = next(r for r in spec["grid"] if r["boost"] == spec["chosen"])
    valid = evaluate_checkpoint(out / "best", data, "valid", device="cpu")
    assert valid.metrics["ndcg@10"] == pytest.approx(chosen["metrics"]["ndcg@10"], abs=1e-9)
    assert json.loads((out / "best_metrics.json").read_text())["cold_boost"] == spec["chosen"]
    # A boost of 50 spreads puts every new item above every trained one, for every user.
    rec = Recommender(SeqRecModel.from_pretrained(out / "best"), data)
    rec.model.spec.model.items.cold_boost = 50.0
    top = rec.recommend(data.users["user_id"].iloc[0], k=int(cold.sum()), include_seen=True)
    assert all(cold[item.item_idx] for item in top.items)


def test_boost_moves_only_new_items_by_a_share_of_each_rows_spread(tiny_backbones, tiny_data) -> None:
    from seqrec.modeling import SeqRecModel
    from tests.tiny_models import tiny_run_config

    cfg = tiny_run_config(tiny_backbones("bert"), **{"train.stage": "head", "model.backbone.hidden_size": 8})
    n = tiny_data.n_items
    counts = np.arange(n) % 3  # every third item has no training event
    model = SeqRecModel(
        cfg, n, tiny_data.profile_spec, tiny_data.behaviors, load_backbone=False, item_counts=counts
    )
    scores = torch.randn(2, n) * torch.tensor([[1.0], [5.0]])
    boosted = model.boost_cold(scores, 2.0)
    spread = scores.std(dim=-1, keepdim=True)
    new = torch.from_numpy(counts == 0)
    assert torch.equal(boosted[:, ~new], scores[:, ~new])
    assert torch.allclose(boosted[:, new], scores[:, new] + 2.0 * spread)
    assert torch.equal(model.boost_cold(scores), scores)  # cold_boost defaults to 0: off


def test_negative_boost_values_are_refused() -> None:
    from seqrec.config import RunConfig, validate

    cfg = RunConfig()
    cfg.model.items.cold_boost_grid = [0.0, -1.0]
    with pytest.raises(ConfigError, match="cold_boost_grid"):
        validate(cfg)
