"""Protocols: history masking (full), fixed saved negatives (sampled), candidate files (candidates)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.baselines.sequences import eval_loader
from seqrec.config import EvalConfig
from seqrec.data.schema import DataError, PreparedData
from seqrec.evaluation.evaluator import collect_ranks, evaluate
from seqrec.evaluation.protocols import (
    CandidateFile,
    FullRanking,
    SampledRanking,
    history_mask,
    make_protocol,
)


class HistoryLover:
    """Adversarial scorer: the user's history items score highest, the target next, the rest below."""

    def __init__(self, n_items: int, seed: int = 0):
        self.n_items, self.g = n_items, torch.Generator().manual_seed(seed)

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        b = batch["user_idx"].shape[0]
        scores = torch.rand(b, self.n_items, generator=self.g)  # [B, N] in [0, 1)
        scores[history_mask(batch["history_items"], self.n_items)] = 100.0
        scores[torch.arange(b), batch["eval_target"]] = 50.0
        return scores


def history_sets(data: PreparedData, split: str) -> dict[int, set[int]]:
    out = {}
    for u in data.eval_users(split).tolist():  # type: ignore[arg-type]
        items, _, _ = data.sequence(u)
        out[u] = set(items[: data.input_end(u, split)].tolist())  # type: ignore[arg-type]
    return out


# ---- full ----------------------------------------------------------------------------------


def test_history_mask_marks_exactly_the_history() -> None:
    hist = torch.tensor([[0, 3, -1, -1], [2, -1, -1, -1], [-1, -1, -1, -1]])
    mask = history_mask(hist, 5)
    assert mask.tolist() == [
        [True, False, False, True, False],
        [False, False, True, False, False],
        [False] * 5,
    ]


def test_full_ranking_never_ranks_history_items_and_never_masks_the_target(tiny_data: PreparedData) -> None:
    hist = history_sets(tiny_data, "valid")
    repeats = [u for u, h in hist.items() if tiny_data.target(u, "valid") in h]
    assert repeats, "the fixture should contain users whose target also occurs in their history"
    model = HistoryLover(tiny_data.n_items)
    batches = eval_loader(tiny_data, "valid", max_len=5, batch_size=7)

    rows = collect_ranks(model, batches, FullRanking(mask_history=True), progress=False)
    # Every history item outscores the target, so any unmasked history item would push it down;
    # a masked target would not be ranked at all. Rank 0 for everyone means neither happened.
    assert rows[:, 2].tolist() == [0] * len(hist)
    # The target competes with every non-history item; a repeated target is not masked out of the count.
    for u, _, _, others in rows.tolist():
        assert others == tiny_data.n_items - 1 - len(hist[u] - {tiny_data.target(u, "valid")})

    rows = collect_ranks(model, batches, FullRanking(mask_history=False), progress=False)
    for u, target, rank, _ in rows.tolist():
        assert rank == len(hist[u] - {target})  # unmasked: exactly the history items rank above


# ---- sampled -------------------------------------------------------------------------------


def sampled(
    data: PreparedData, folder: Path, n: int = 10, seed: int = 7, sampler: str = "uniform"
) -> SampledRanking:
    return SampledRanking.load_or_create(data, "valid", n, seed, sampler, folder)  # type: ignore[arg-type]


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_sampled_negatives_are_fixed_saved_and_never_the_users_items(
    tiny_data: PreparedData, tmp_path: Path, sampler: str
) -> None:
    first = sampled(tiny_data, tmp_path, sampler=sampler)
    assert first.path.is_file() and first.path.parent == tmp_path
    mtime = first.path.stat().st_mtime_ns
    again = sampled(tiny_data, tmp_path, sampler=sampler)  # reloaded from the file, not redrawn
    assert again.path.stat().st_mtime_ns == mtime
    assert torch.equal(first.negatives, again.negatives)
    redrawn = sampled(tiny_data, tmp_path / "elsewhere", sampler=sampler)  # same seed, fresh draw
    assert torch.equal(first.negatives, redrawn.negatives)
    other_seed = sampled(tiny_data, tmp_path, seed=8, sampler=sampler)
    assert not torch.equal(first.negatives, other_seed.negatives)

    counts = tiny_data.train_item_counts()
    for u in tiny_data.eval_users("valid").tolist():
        negs = first.negatives[u].numpy()
        items, _, _ = tiny_data.sequence(u)  # the whole sequence, test target included
        real = negs[negs >= 0]
        assert len(set(real.tolist())) == len(real)  # distinct
        assert not set(real.tolist()) & set(items.tolist())
        # Fewer than n only when the catalogue runs out of items the user never touched.
        assert len(real) == min(10, tiny_data.n_items - len(set(items.tolist())))
        if sampler == "popularity":  # items never seen in training are drawn only when nothing else is left
            unseen_by_user = ~np.isin(np.arange(tiny_data.n_items), items)
            if ((counts > 0) & unseen_by_user).sum() >= len(real):
                assert (counts[real] > 0).all()


def test_sampled_evaluation_is_identical_on_every_call(tiny_data: PreparedData, tmp_path: Path) -> None:
    cfg = EvalConfig(protocol="sampled", ks=[1, 5], num_negatives=8, negatives_dir=str(tmp_path))
    item_scores = torch.rand(tiny_data.n_items, generator=torch.Generator().manual_seed(0))

    class Fixed:  # the same arbitrary scores every call: metrics then depend only on the negatives
        def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return item_scores.expand(len(batch["user_idx"]), -1)

    runs = []
    for _ in range(2):
        protocol = make_protocol(cfg, tiny_data, "valid")
        result = evaluate(
            Fixed(), eval_loader(tiny_data, "valid", 5), tiny_data, "valid", cfg, protocol, progress=False
        )
        runs.append(result.metrics)
        assert result.protocol["label"] == "legacy, sampled"
        assert result.protocol["negatives_file"] == str(protocol.path)  # type: ignore[attr-defined]
    assert runs[0] == runs[1]
    assert 0.0 < runs[0]["mrr"] < 1.0  # not a degenerate case where any negatives give the same numbers


def test_sampled_negatives_file_from_other_data_is_refused(tiny_data: PreparedData, tmp_path: Path) -> None:
    first = sampled(tiny_data, tmp_path)
    other = PreparedData.from_frames(
        tiny_data.meta,
        tiny_data.items,
        tiny_data.users.assign(valid_pos=tiny_data.users["valid_pos"] - 1),
        _events(tiny_data),
    )
    with pytest.raises(DataError, match="other data"):
        SampledRanking.load_or_create(other, "valid", 10, 7, "uniform", tmp_path)
    assert first.path.is_file()


def _events(data: PreparedData):  # type: ignore[no-untyped-def]
    import pandas as pd

    users = np.repeat(np.arange(data.n_users), np.diff(data.offsets))
    return pd.DataFrame(
        {
            "user_idx": users.astype(np.int32),
            "item_idx": data.seq_items,
            "timestamp": data.seq_times,
            "behavior": data.seq_behaviors,
            "value": np.full(len(users), np.nan, dtype=np.float32),
        }
    )


# ---- candidates ----------------------------------------------------------------------------


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8"
    )
    return path


def test_candidates_file_ranks_the_listed_items(tiny_data: PreparedData, tmp_path: Path) -> None:
    uid = tiny_data.users["user_id"]
    iid = tiny_data.items["item_id"]
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"user_id": uid[0], "target": iid[3], "candidates": [iid[1], iid[3], iid[2]]},
            {"user_id": uid[5], "target": iid[0], "candidates": [iid[0], iid[4]]},
        ],
    )
    protocol = CandidateFile.load(path, tiny_data, "valid")
    assert protocol.users().tolist() == [0, 5]

    class ByIndex:  # score = item index: ranks follow item order, so they can be computed by hand
        def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.arange(tiny_data.n_items, dtype=torch.float32).expand(len(batch["user_idx"]), -1)

    rows = collect_ranks(
        ByIndex(), eval_loader(tiny_data, "valid", 5, users=protocol.users()), protocol, progress=False
    )
    assert rows.tolist() == [[0, 3, 0, 2], [5, 0, 1, 1]]  # (user, target from the file, rank, others)
    # Batches may hold users absent from the file (e.g. the whole split): they are skipped.
    rows_all = collect_ranks(ByIndex(), eval_loader(tiny_data, "valid", 5), protocol, progress=False)
    assert rows_all.tolist() == rows.tolist()


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ({"user_id": "U000", "target": "I001"}, "expected"),
        ({"user_id": "nobody", "target": "I001", "candidates": ["I001"]}, "unknown user_id 'nobody'"),
        (
            {"user_id": "U000", "target": "I001", "candidates": ["I001", "I999"]},
            r"unknown item_id\(s\) \['I999'\]",
        ),
        ({"user_id": "U000", "target": "I001", "candidates": ["I002", "I003"]}, "target 'I001' is not among"),
        ({"user_id": "U000", "target": "I001", "candidates": []}, "non-empty list"),
        ({"user_id": "U000", "target": "I001", "candidates": ["I001", "I001"]}, "duplicate"),
        ({"user_id": "U001", "target": "I001", "candidates": ["I001"]}, "already listed"),
    ],
)
def test_candidates_file_errors_name_the_line(
    tiny_data: PreparedData, tmp_path: Path, line: object, message: str
) -> None:
    good = {"user_id": "U001", "target": "I002", "candidates": ["I002", "I004"]}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(DataError, match=message) as err:
        CandidateFile.load(path, tiny_data, "valid")
    assert f"{path}:2:" in str(err.value)


def test_candidates_missing_file_and_empty_file(tiny_data: PreparedData, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CandidateFile.load(tmp_path / "absent.jsonl", tiny_data, "valid")
    with pytest.raises(DataError, match="no candidate lines"):
        CandidateFile.load(write_jsonl(tmp_path / "empty.jsonl", [""]), tiny_data, "valid")
