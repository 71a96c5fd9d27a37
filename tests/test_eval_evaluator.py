"""The evaluator (dedupe under a distributed gather, slices), the report files and `seqrec evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from seqrec.baselines.popularity import PopularityModel
from seqrec.baselines.sasrec import SASRec
from seqrec.baselines.sequences import EvalSequences, collate_eval, eval_loader
from seqrec.cli import main
from seqrec.config import ConfigError, EvalConfig, RunConfig, SASRecConfig
from seqrec.data.schema import PreparedData
from seqrec.evaluation.evaluator import EvalResult, collect_ranks, evaluate, length_bucket_labels
from seqrec.evaluation.metrics import metric_names
from seqrec.evaluation.protocols import FullRanking
from seqrec.evaluation.report import write_report
from tests.conftest import make_tiny_frames


class PerUserScores:
    """Deterministic scores that differ per user and item (ranks vary across users)."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = batch["user_idx"].double().unsqueeze(1)  # [B, 1]
        i = torch.arange(self.n_items, dtype=torch.float64)  # [N]
        return torch.sin(u * 1.7 + i * 0.37) * torch.cos(i * u * 0.11)  # [B, N]


# ---- distributed dedupe --------------------------------------------------------------------


def test_distributed_gather_counts_every_user_once(tiny_data: PreparedData) -> None:
    users = tiny_data.eval_users("valid")[:-1]  # an odd number: the sampler pads by repeating a user
    ds = EvalSequences(tiny_data, "valid", 5, users)
    loaders = [
        DataLoader(
            ds, batch_size=4, sampler=DistributedSampler(ds, 2, rank, shuffle=False), collate_fn=collate_eval
        )
        for rank in (0, 1)
    ]
    assert sum(len(b["user_idx"]) for loader in loaders for b in loader) == len(users) + 1  # one duplicate
    model, protocol, cfg = PerUserScores(tiny_data.n_items), FullRanking(), EvalConfig()

    # What rank 1 contributes to each gather call, recorded by running its share first.
    from_rank1: list[torch.Tensor] = []
    collect_ranks(
        model, loaders[1], protocol, gather=lambda rows: from_rank1.append(rows) or rows, progress=False
    )
    pending = iter(from_rank1)

    def fake_gather(
        rows: torch.Tensor,
    ) -> torch.Tensor:  # like gather_for_metrics: rank 0's rows, then rank 1's
        return torch.cat([rows, next(pending)])

    distributed = evaluate(
        model, loaders[0], tiny_data, "valid", cfg, protocol, gather=fake_gather, progress=False
    )
    single = evaluate(
        model, eval_loader(tiny_data, "valid", 5, users=users), tiny_data, "valid", cfg, progress=False
    )
    assert distributed.n_users == single.n_users == len(users)
    assert distributed.metrics == pytest.approx(single.metrics)
    assert distributed.slices == single.slices

    # Every process also receives every row twice in some setups (gather without remainder handling).
    doubled = evaluate(
        model, eval_loader(tiny_data, "valid", 5, users=users), tiny_data, "valid", cfg,
        gather=lambda rows: torch.cat([rows, rows]), progress=False,
    )  # fmt: skip
    assert doubled.metrics == pytest.approx(single.metrics)


# ---- slices --------------------------------------------------------------------------------


def data_with_a_cold_target() -> tuple[PreparedData, int]:
    """The tiny set plus one item that appears only as user 0's validation target."""
    f = make_tiny_frames()
    new_item = len(f["items"])
    f["items"] = pd.concat(
        [
            f["items"],
            pd.DataFrame(
                [
                    {
                        "item_idx": new_item,
                        "item_id": "COLD",
                        "title": "new",
                        "category": "Makeup",
                        "brand": "B",
                    }
                ]
            ),
        ],
        ignore_index=True,
    ).astype({"item_idx": "int32"})
    ev = f["events"]
    row = ev.index[ev["user_idx"] == 0][int(f["users"].loc[0, "valid_pos"])]
    ev.loc[row, "item_idx"] = new_item
    data = PreparedData.from_frames(f["meta"], f["items"], f["users"], ev, f["profiles"], f["spec"])
    return data, new_item


def test_slices_by_history_length_and_cold_target() -> None:
    data, cold_item = data_with_a_cold_target()
    assert data.train_item_counts()[cold_item] == 0
    cfg = EvalConfig(length_buckets=[8, 11], per_user=True)
    result = evaluate(
        PerUserScores(data.n_items), eval_loader(data, "valid", 5), data, "valid", cfg, progress=False
    )
    per_user = result.per_user
    assert per_user is not None and len(per_user) == result.n_users == len(data.eval_users("valid"))

    lengths = data.users["valid_pos"].to_numpy()
    expected = {"1-8": lengths <= 8, "9-11": (lengths > 8) & (lengths <= 11), "12+": lengths > 11}
    by_length = result.slices["history_length"]
    assert list(by_length) == [k for k, sel in expected.items() if sel.any()]
    for label, sel in expected.items():
        if sel.any():
            assert by_length[label]["users"] == sel.sum()
            assert by_length[label]["ndcg@10"] == pytest.approx(per_user["ndcg@10"][sel].mean())

    cold = result.slices["target_item"]["cold"]
    assert cold["users"] == 1
    assert cold["mrr"] == pytest.approx(float(per_user.loc[per_user["user_idx"] == 0, "mrr"].iloc[0]))
    assert result.slices["target_item"]["warm"]["users"] == result.n_users - 1
    assert per_user["cold_target"].sum() == 1
    assert result.metrics["ndcg@10"] == pytest.approx(per_user["ndcg@10"].mean())


def test_length_bucket_labels(tiny_data: PreparedData) -> None:
    assert length_bucket_labels([5, 10, 20, 50]) == ["1-5", "6-10", "11-20", "21-50", "51+"]
    assert length_bucket_labels([1, 3]) == ["1", "2-3", "4+"]
    with pytest.raises(ConfigError, match="length_buckets"):
        evaluate(PerUserScores(tiny_data.n_items), eval_loader(tiny_data, "valid", 5), tiny_data, "valid",
                 EvalConfig(length_buckets=[10, 5]), progress=False)  # fmt: skip


# ---- report --------------------------------------------------------------------------------


def test_report_files_and_metrics_json_keys(tiny_data: PreparedData, tmp_path: Path) -> None:
    cfg = EvalConfig(ks=[5, 10], per_user=True)
    result = evaluate(
        PerUserScores(tiny_data.n_items),
        eval_loader(tiny_data, "test", 5),
        tiny_data,
        "test",
        cfg,
        progress=False,
    )
    paths = write_report(result, tmp_path, {"model": "fake"})
    assert sorted(p.name for p in paths) == ["metrics.json", "metrics.md", "per_user.csv"]
    payload = json.loads((tmp_path / "metrics.json").read_text())
    for key in metric_names([5, 10]):
        assert 0.0 <= payload[key] <= 1.0
    assert payload["split"] == "test" and payload["n_users"] == len(tiny_data.eval_users("test"))
    assert payload["model"] == "fake"
    assert {"protocol", "tie_rule", "masking", "candidates"} <= set(payload["protocol"])
    assert payload["protocol"]["tie_rule"].startswith("pessimistic")
    assert set(payload["slices"]) == {"history_length", "target_item"}
    table = (tmp_path / "metrics.md").read_text()
    assert "| slice | users | hr@5 | hr@10 | ndcg@5 | ndcg@10 | mrr | auc |" in table
    rows = pd.read_csv(tmp_path / "per_user.csv")
    assert len(rows) == payload["n_users"]
    assert rows["ndcg@10"].mean() == pytest.approx(payload["ndcg@10"])


# ---- seqrec evaluate -----------------------------------------------------------------------


@pytest.fixture
def popularity_folder(tiny_data: PreparedData, tiny_data_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "pop"
    PopularityModel.fit(tiny_data).save_pretrained(folder, RunConfig(data_dir=str(tiny_data_dir)))
    return folder


def test_cli_evaluate_popularity_writes_the_report(
    popularity_folder: Path, tiny_data: PreparedData, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["evaluate", "--checkpoint", str(popularity_folder), "--split", "valid", "--per-user", "ks=[1,10]"]
    )
    assert rc == 0
    out = popularity_folder / "eval-valid"
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["model"] == "popularity" and payload["protocol"]["protocol"] == "full"
    assert {"hr@1", "hr@10", "ndcg@1", "ndcg@10", "mrr", "auc"} <= set(payload)
    assert (out / "per_user.csv").is_file() and (out / "metrics.md").is_file()
    assert json.loads((out / "seqrec_config.json").read_text())["eval"]["ks"] == [1, 10]
    direct = evaluate(
        PopularityModel.fit(tiny_data),
        eval_loader(tiny_data, "valid", 1),
        tiny_data,
        "valid",
        EvalConfig(ks=[1, 10]),
        progress=False,
    )
    assert {k: payload[k] for k in direct.metrics} == pytest.approx(direct.metrics)
    assert "| **all** |" in capsys.readouterr().out


def test_cli_evaluate_sampled_and_candidates(popularity_folder: Path, tmp_path: Path) -> None:
    neg_dir = tmp_path / "negs"
    args = [
        "evaluate",
        "--checkpoint",
        str(popularity_folder),
        "--split",
        "test",
        "--out",
        str(tmp_path / "s"),
    ]
    assert (
        main([*args, "--protocol", "sampled", "eval.num_negatives=5", f"eval.negatives_dir={neg_dir}"]) == 0
    )
    payload = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert payload["protocol"]["label"] == "legacy, sampled"
    assert Path(payload["protocol"]["negatives_file"]).parent == neg_dir

    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"user_id": "U003", "target": "I004", "candidates": ["I004", "I005"]}) + "\n")
    out = tmp_path / "c"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(popularity_folder),
                "--candidates",
                str(cands),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["n_users"] == 1 and payload["protocol"]["protocol"] == "candidates"


def test_cli_evaluate_sasrec_folder(tiny_data: PreparedData, tiny_data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sasrec"
    SASRec(tiny_data.n_items, SASRecConfig(d_model=8, layers=1, max_len=4)).save_pretrained(folder)
    assert (
        main(["evaluate", "--checkpoint", str(folder), "--data", str(tiny_data_dir), "--split", "valid"]) == 0
    )
    assert json.loads((folder / "eval-valid" / "metrics.json").read_text())["model"] == "sasrec"


def test_cli_evaluate_user_errors_are_one_line(
    popularity_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "--checkpoint", str(popularity_folder)]
    assert main([*base, "train.lr=0.1"]) == 2
    assert "only takes eval.*" in capsys.readouterr().err
    assert main([*base, "eval.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "absent")]) == 2
    assert "not found" in capsys.readouterr().err

    other = tmp_path / "other_data"  # a data set with a different catalogue
    from seqrec.data.schema import write_prepared

    other.mkdir()
    write_prepared(other, **make_tiny_frames(n_items=24))
    assert main([*base, "--data", str(other)]) == 2
    assert "trained on 30 items" in capsys.readouterr().err
    assert not (popularity_folder / "eval-test").exists()  # nothing half-written


def test_evaluate_result_is_plain_json(tiny_data: PreparedData) -> None:
    result = evaluate(
        PerUserScores(tiny_data.n_items),
        eval_loader(tiny_data, "valid", 5),
        tiny_data,
        "valid",
        EvalConfig(),
        progress=False,
    )
    assert isinstance(result, EvalResult)
    json.dumps(result.to_json())  # no numpy scalars
    assert all(isinstance(v, float) for v in result.metrics.values())
    assert np.isfinite(list(result.metrics.values())).all()
