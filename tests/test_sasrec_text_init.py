"""Text-aware SASRec through the ordinary `seqrec train` path: sasrec.item_init=text_pca (LLMInit:
item embeddings start from the PCA of the cached item text features, row 0 (padding) untouched) and
sasrec.item_text=add (every item embedding adds a projection of its frozen text feature, saved
with the weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from seqrec.modeling.text_init import init_ids_from_text, text_init_rows
from tests.test_reliability_models import tiny_yaml
from tests.test_training_loop import fresh_accelerate_state  # noqa: F401  (autouse fixture)
from tests.tiny_models import tiny_backbones_fixture  # noqa: F401  (fixture)


def _train_sasrec(tiny_backbones, data_dir: Path, out: Path, *overrides: str) -> Path:
    """A tiny SASRec run (d_model 8) on the tiny set with the tiny BERT as the text encoder."""
    from seqrec.cli import main

    torch.set_num_threads(1)
    config = tiny_yaml(tiny_backbones("bert"), out.parent)
    common = ["train.model=sasrec", "sasrec.d_model=8", "sasrec.heads=1", "train.eval_max_users=0"]
    assert main(["train", "--config", str(config), "--data", str(data_dir), "--output", str(out), *common, *overrides]) == 0  # fmt: skip
    return out


def test_offset_keeps_the_padding_row_and_fills_the_rest() -> None:
    feats = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    table = nn.Embedding(7, 4, padding_idx=0)
    with torch.no_grad():
        table.weight.zero_()
    init_ids_from_text(table, feats, offset=1)
    assert torch.equal(table.weight[0], torch.zeros(4))
    assert torch.allclose(table.weight[1:], text_init_rows(feats, 4))
    with pytest.raises(ValueError, match=r"6 rows.*5 items"):
        init_ids_from_text(nn.Embedding(6, 4), feats, offset=1)  # one row short


def test_seqrec_train_initialises_sasrec_items_from_text(
    tiny_backbones, tiny_data_dir, tmp_path: Path
) -> None:
    from seqrec.baselines.sasrec import SASRec
    from seqrec.data.features import FeatureStore

    # lr=0 freezes the weights, so the saved model shows the initialisation.
    text = _train_sasrec(
        tiny_backbones, tiny_data_dir, tmp_path / "text", "train.lr=0", "sasrec.item_init=text_pca"
    )
    random = _train_sasrec(tiny_backbones, tiny_data_dir, tmp_path / "random", "train.lr=0")
    text_table = SASRec.from_pretrained(text / "best").item_emb.weight.detach()
    features = FeatureStore.load(text / "features")  # built by the run: no cache was given
    assert torch.allclose(text_table[1:], text_init_rows(torch.as_tensor(features.items), 8), atol=1e-6)
    assert torch.equal(text_table[0], torch.zeros(8))
    assert not (random / "features").exists()  # the ID-only baseline needs no backbone
    random_table = SASRec.from_pretrained(random / "best").item_emb.weight.detach()
    assert not torch.allclose(random_table[1:], text_table[1:], atol=1e-3)


def test_item_text_adds_a_projection_of_each_items_own_text() -> None:
    from seqrec.baselines.sasrec import SASRec
    from seqrec.config import SASRecConfig

    cfg = SASRecConfig(d_model=8, heads=1, layers=1, max_len=5, item_text="add")
    torch.manual_seed(0)
    model = SASRec(6, cfg, text_dim=10)
    assert model.text_proj is not None
    feats = torch.randn(6, 10)
    model.set_item_text(feats)
    table = model.embedding_table().detach()
    assert torch.equal(table[0], torch.zeros(8))  # padding stays zero (bias-free projection)
    expected = model.item_emb.weight.detach()[1:] + feats @ model.text_proj.weight.detach().T
    assert torch.allclose(table[1:], expected, atol=1e-6)
    # An item's text moves only that item's row.
    feats[2] += 1.0
    model.set_item_text(feats)
    moved = (model.embedding_table().detach() - table).abs().sum(dim=1) > 1e-6
    assert moved.tolist() == [False, False, False, True, False, False, False]
    with pytest.raises(ValueError, match=r"\(6, 10\)"):
        model.set_item_text(torch.randn(5, 10))
    with pytest.raises(ValueError, match="text_dim"):
        SASRec(6, cfg)


def test_item_text_model_saves_its_text_and_reloads_to_the_same_scores(
    tiny_backbones, tiny_data_dir, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from seqrec.baselines.sasrec import SASRec
    from seqrec.data.features import FeatureStore

    out = _train_sasrec(tiny_backbones, tiny_data_dir, tmp_path / "run", "sasrec.item_text=add")
    model = SASRec.from_pretrained(out / "best")  # no feature cache needed: the text is in the weights
    assert model.item_text is not None
    assert torch.equal(
        model.item_text[1:], torch.as_tensor(FeatureStore.load(out / "features").items).float()
    )
    assert torch.equal(load_file(str(out / "best" / "model.safetensors"))["item_text"], model.item_text)
    batch = {"input_items": torch.tensor([[0, 1, 2], [3, 4, 5]])}
    again = SASRec.from_pretrained(out / "best")
    assert torch.equal(model.eval().score_batch(batch), again.eval().score_batch(batch))
