"""eval.sample_users: a fixed random user sample, saved, reused, refused for other data; and
model.head.loss=auto picks sampled softmax above model.head.sampled_above catalogue items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.baselines.sequences import eval_loader
from seqrec.config import ConfigError, EvalConfig, RunConfig, validate
from seqrec.data.schema import DataError, PreparedData
from seqrec.evaluation.evaluator import evaluate
from seqrec.evaluation.protocols import make_protocol
from seqrec.evaluation.user_sample import sample_path, with_user_sample
from seqrec.modeling.losses import resolve_loss


class Fixed:
    def __init__(self, n_items: int):
        self.scores = torch.rand(n_items, generator=torch.Generator().manual_seed(0))

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scores.expand(len(batch["user_idx"]), -1)


def test_sample_is_fixed_saved_and_only_those_users_are_evaluated(
    tiny_data: PreparedData, tmp_path: Path
) -> None:
    cfg = EvalConfig(ks=[5], sample_users=10, sample_seed=7, negatives_dir=str(tmp_path))
    results, samples = [], []
    for _ in range(2):
        protocol = with_user_sample(make_protocol(cfg, tiny_data, "test"), cfg, tiny_data, "test")
        users = protocol.users()
        assert users is not None
        samples.append(users)
        # All users go through the batches: the sample is enforced by the protocol, not the loader.
        result = evaluate(
            Fixed(tiny_data.n_items), eval_loader(tiny_data, "test", 5), tiny_data, "test", cfg, protocol,
            progress=False, per_user=True,
        )  # fmt: skip
        results.append(result)
    np.testing.assert_array_equal(samples[0], samples[1])
    assert len(samples[0]) == 10 and set(samples[0]) <= set(tiny_data.eval_users("test").tolist())
    assert results[0].n_users == 10 and results[0].metrics == results[1].metrics
    assert results[0].per_user is not None and set(results[0].per_user["user_idx"]) == set(
        samples[0].tolist()
    )
    saved = json.loads(sample_path(tmp_path, "test", 10, 7).read_text())
    assert saved["user_ids"] == tiny_data.users["user_id"].astype(str).to_numpy()[samples[0]].tolist()
    assert results[0].protocol["user_sample"] == {
        "users": 10,
        "seed": 7,
        "file": str(sample_path(tmp_path, "test", 10, 7)),
    }
    other = with_user_sample(
        make_protocol(cfg, tiny_data, "test"),
        EvalConfig(sample_users=10, sample_seed=8, negatives_dir=str(tmp_path)),
        tiny_data,
        "test",
    )
    assert not np.array_equal(other.users(), samples[0])


def test_sample_of_other_data_is_refused(tiny_data: PreparedData, tmp_path: Path) -> None:
    cfg = EvalConfig(sample_users=5, negatives_dir=str(tmp_path))
    with_user_sample(make_protocol(cfg, tiny_data, "test"), cfg, tiny_data, "test")
    path = sample_path(tmp_path, "test", 5, cfg.sample_seed)
    saved = json.loads(path.read_text())
    saved["data_signature"] = "0" * 64
    path.write_text(json.dumps(saved))
    with pytest.raises(DataError, match="other data"):
        with_user_sample(make_protocol(cfg, tiny_data, "test"), cfg, tiny_data, "test")


def test_no_sample_by_default_and_negative_size_refused(tiny_data: PreparedData) -> None:
    protocol = make_protocol(EvalConfig(), tiny_data, "test")
    assert with_user_sample(protocol, EvalConfig(), tiny_data, "test") is protocol
    cfg = RunConfig()
    cfg.eval.sample_users = -1
    with pytest.raises(ConfigError, match="sample_users"):
        validate(cfg)


def test_auto_loss_is_sampled_above_the_threshold() -> None:
    cfg = RunConfig()
    assert cfg.model.head.loss == "auto"
    above = cfg.model.head.sampled_above
    assert resolve_loss("auto", above, above) == "full"
    assert resolve_loss("auto", above + 1, above) == "sampled"
    assert resolve_loss("full", 10 * above, above) == "full"
    assert resolve_loss("sampled", 10, above) == "sampled"
