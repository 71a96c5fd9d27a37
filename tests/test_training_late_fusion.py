"""train.model=ensemble end to end on the tiny set: members trained beside it, weight picked on
validation, and the folder evaluated by `seqrec evaluate` like any model."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.test_training_loop import fresh_accelerate_state  # noqa: F401  (autouse fixture)


def test_ensemble_trains_members_picks_a_weight_on_validation_and_evaluates(
    tmp_path: Path, tiny_data_dir: Path
) -> None:
    from seqrec.cli import main
    from seqrec.data.schema import PreparedData
    from seqrec.evaluation.cli import evaluate_checkpoint

    sasrec = tmp_path / "tiny-sasrec.yaml"
    sasrec.write_text(
        yaml.safe_dump(
            {
                "sasrec": {"d_model": 16, "layers": 1, "heads": 1, "max_len": 10},
                "train": {"model": "sasrec", "epochs": 1, "batch_size": 8, "lr": 0.01, "tracker": "none"},
            }
        )
    )
    pop = tmp_path / "tiny-pop.yaml"
    pop.write_text(yaml.safe_dump({"train": {"model": "popularity"}}))
    fusion = tmp_path / "tiny-fusion.yaml"
    fusion.write_text(
        yaml.safe_dump(
            {
                "train": {"model": "ensemble", "tracker": "none"},
                "ensemble": {"members": [str(sasrec), str(pop)], "weights": [0.0, 0.5, 1.0]},
            }
        )
    )
    out = tmp_path / "runs" / "tiny-fusion"
    args = ["train", "--config", str(fusion), "--data", str(tiny_data_dir), "--output", str(out)]
    assert main(args) == 0
    # Members trained beside the ensemble, named after their configs.
    assert (tmp_path / "runs" / "tiny-sasrec" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "tiny-pop" / "best").is_dir()
    spec = json.loads((out / "best" / "late_fusion.json").read_text())
    table = {row["weight"]: row["ndcg@10"] for row in spec["validation"]}
    assert set(table) == {0.0, 0.5, 1.0}
    chosen = spec["weights"][1]
    assert table[chosen] == max(table.values())  # picked on validation
    data = PreparedData.load(tiny_data_dir)
    result = evaluate_checkpoint(out / "best", data, "test", device="cpu")
    assert 0.0 <= result.metrics["ndcg@10"] <= 1.0
    # Weight 0 is the first member alone: same validation figure as evaluating it directly.
    alone = evaluate_checkpoint(tmp_path / "runs" / "tiny-sasrec" / "best", data, "valid", device="cpu")
    assert abs(alone.metrics["ndcg@10"] - table[0.0]) < 1e-9
    # A rerun into the finished ensemble folder is refused without --overwrite (run-folder guard);
    # with it, the weight is chosen again and the finished members are reused, not retrained.
    member_weights = (tmp_path / "runs" / "tiny-sasrec" / "best" / "model.safetensors").read_bytes()
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0
    assert (tmp_path / "runs" / "tiny-sasrec" / "best" / "model.safetensors").read_bytes() == member_weights
    assert json.loads((out / "best" / "late_fusion.json").read_text())["weights"] == spec["weights"]


def test_weight_grid_covers_the_simplex_for_three_members() -> None:
    import pytest

    from seqrec.config import ConfigError
    from seqrec.training.late_fusion import weight_grid

    two = weight_grid([0.0, 0.3, 1.0], 2)
    assert two == [[1.0, 0.0], [0.7, 0.3], [0.0, 1.0]]
    three = weight_grid([0.0, 0.5, 1.0], 3)
    # Members 2 and 3 take grid values with sum <= 1; the first gets the rest.
    assert sorted(map(tuple, three)) == sorted(
        [(1.0, 0.0, 0.0), (0.5, 0.0, 0.5), (0.0, 0.0, 1.0), (0.5, 0.5, 0.0), (0.0, 0.5, 0.5), (0.0, 1.0, 0.0)]
    )
    assert all(abs(sum(w) - 1.0) < 1e-9 and min(w) >= 0.0 for w in three)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        weight_grid([0.0, 1.5], 2)


def test_three_member_ensemble_reproduces_each_member_at_its_corner(
    tmp_path: Path, tiny_data_dir: Path
) -> None:
    from seqrec.cli import main
    from seqrec.data.schema import PreparedData
    from seqrec.evaluation.cli import evaluate_checkpoint

    configs = []
    for name, body in {
        "tiny-sasrec-a": {"model": "sasrec"},
        "tiny-sasrec-b": {"model": "sasrec", "lr": 0.003},
        "tiny-pop": {"model": "popularity"},
    }.items():
        configs.append(tmp_path / f"{name}.yaml")
        train = {"epochs": 1, "batch_size": 8, "lr": 0.01, "tracker": "none"} | body
        sasrec = {"d_model": 16, "layers": 1, "heads": 1, "max_len": 10}
        configs[-1].write_text(yaml.safe_dump({"sasrec": sasrec, "train": train}))
    fusion = tmp_path / "tiny-fusion3.yaml"
    members = [str(c) for c in configs]
    fusion.write_text(yaml.safe_dump({"train": {"model": "ensemble", "tracker": "none"},
                                      "ensemble": {"members": members, "weights": [0.0, 0.5, 1.0]}}))  # fmt: skip
    out = tmp_path / "runs" / "tiny-fusion3"
    assert main(["train", "--config", str(fusion), "--data", str(tiny_data_dir), "--output", str(out)]) == 0
    spec = json.loads((out / "best" / "late_fusion.json").read_text())
    assert len(spec["members"]) == 3 and len(spec["validation"]) == 6
    table = {tuple(r["weights"]): r["ndcg@10"] for r in spec["validation"]}
    assert table[tuple(spec["weights"])] == max(table.values())
    data = PreparedData.load(tiny_data_dir)
    for i, name in enumerate(["tiny-sasrec-a", "tiny-sasrec-b", "tiny-pop"]):
        corner = tuple(1.0 if j == i else 0.0 for j in range(3))
        alone = evaluate_checkpoint(tmp_path / "runs" / name / "best", data, "valid", device="cpu")
        assert abs(alone.metrics["ndcg@10"] - table[corner]) < 1e-9
    fused = evaluate_checkpoint(out / "best", data, "valid", device="cpu")
    assert abs(fused.metrics["ndcg@10"] - table[tuple(spec["weights"])]) < 1e-9
    # Finished run folders as members: fused as they are (nothing retrained), the same figures as
    # the matching rows of the three-member grid.
    pair = tmp_path / "pair.yaml"
    folders = [str(tmp_path / "runs" / n) for n in ("tiny-sasrec-a", "tiny-sasrec-b")]
    pair.write_text(yaml.safe_dump({"train": {"model": "ensemble", "tracker": "none"},
                                    "ensemble": {"members": folders, "weights": [0.0, 0.5, 1.0]}}))  # fmt: skip
    weights_before = (tmp_path / "runs" / "tiny-sasrec-a" / "best" / "model.safetensors").read_bytes()
    out2 = tmp_path / "pair-run"
    assert main(["train", "--config", str(pair), "--data", str(tiny_data_dir), "--output", str(out2)]) == 0
    rows = json.loads((out2 / "best" / "late_fusion.json").read_text())["validation"]
    for r in rows:
        assert abs(r["ndcg@10"] - table[(*r["weights"], 0.0)]) < 1e-9
    assert (tmp_path / "runs" / "tiny-sasrec-a" / "best" / "model.safetensors").read_bytes() == weights_before
    (tmp_path / "empty-run").mkdir()
    pair.write_text(yaml.safe_dump({"train": {"model": "ensemble"}, "ensemble": {"members": [folders[0], str(tmp_path / "empty-run")]}}))  # fmt: skip
    assert (
        main(["train", "--config", str(pair), "--data", str(tiny_data_dir), "--output", str(tmp_path / "x")])
        == 2
    )
