"""sasrec.item_init=text_pca (LLMInit): SASRec's item embeddings start from the PCA of the cached
item text features, row 0 (padding) untouched, through the ordinary `seqrec train` path."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seqrec.modeling.text_init import init_ids_from_text, text_init_rows
from tests.test_reliability_models import tiny_yaml
from tests.test_training_loop import fresh_accelerate_state  # noqa: F401  (autouse fixture)
from tests.tiny_models import tiny_backbones_fixture  # noqa: F401  (fixture)


def test_offset_keeps_the_padding_row_and_fills_the_rest() -> None:
    feats = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    table = nn.Embedding(7, 4, padding_idx=0)
    with torch.no_grad():
        table.weight.zero_()
    init_ids_from_text(table, feats, offset=1)
    assert torch.equal(table.weight[0], torch.zeros(4))
    assert torch.allclose(table.weight[1:], text_init_rows(feats, 4))
    try:
        init_ids_from_text(nn.Embedding(6, 4), feats, offset=1)  # one row short
    except ValueError as e:
        assert "6 rows" in str(e) and "5 items" in str(e)
    else:
        raise AssertionError("a table of the wrong size was accepted")


def test_seqrec_train_initialises_sasrec_items_from_text(
    tiny_backbones, tiny_data_dir, tmp_path: Path
) -> None:
    from seqrec.baselines.sasrec import SASRec
    from seqrec.cli import main
    from seqrec.data.features import FeatureStore

    torch.set_num_threads(1)
    args = [
        "train",
        "--config",
        str(tiny_yaml(tiny_backbones("bert"), tmp_path)),
        "--data",
        str(tiny_data_dir),
    ]
    common = [
        "train.model=sasrec",
        "sasrec.d_model=8",
        "sasrec.heads=1",
        "train.lr=0",
        "train.eval_max_users=0",
    ]
    out = {}
    for init in ("random", "text_pca"):
        out[init] = tmp_path / init
        assert main([*args, "--output", str(out[init]), *common, f"sasrec.item_init={init}"]) == 0
    # lr=0 freezes the weights, so the saved model shows the initialisation.
    text = SASRec.from_pretrained(out["text_pca"] / "best").item_emb.weight.detach()
    features = FeatureStore.load(out["text_pca"] / "features")  # built by the run: no cache was given
    assert torch.allclose(text[1:], text_init_rows(torch.as_tensor(features.items), 8), atol=1e-6)
    assert torch.equal(text[0], torch.zeros(8))
    assert not (out["random"] / "features").exists()  # the ID-only baseline needs no backbone
    random = SASRec.from_pretrained(out["random"] / "best").item_emb.weight.detach()
    assert not torch.allclose(random[1:], text[1:], atol=1e-3)


def test_item_text_adds_a_projection_of_each_items_own_text() -> None:
    from seqrec.baselines.sasrec import SASRec
    from seqrec.config import SASRecConfig

    cfg = SASRecConfig(d_model=8, heads=1, layers=1, max_len=5, item_text="add")
    torch.manual_seed(0)
    model = SASRec(6, cfg, text_dim=10)
    feats = torch.randn(6, 10)
    model.set_item_text(feats)
    table = model.embedding_table().detach()
    assert torch.equal(table[0], torch.zeros(8))  # padding stays zero (bias-free projection)
    ids_only = model.item_emb.weight.detach()
    assert torch.allclose(table[1:], ids_only[1:] + feats @ model.text_proj.weight.detach().T, atol=1e-6)  # type: ignore[union-attr]
    # An item's text moves only that item's row.
    feats2 = feats.clone()
    feats2[2] += 1.0
    model.set_item_text(feats2)
    moved = (model.embedding_table().detach() - table).abs().sum(dim=1) > 1e-6
    assert moved.tolist() == [False, False, False, True, False, False, False]
    try:
        model.set_item_text(torch.randn(5, 10))
    except ValueError as e:
        assert "(6, 10)" in str(e)
    else:
        raise AssertionError("features of the wrong shape were accepted")
    try:
        SASRec(6, cfg)
    except ValueError as e:
        assert "text_dim" in str(e)
    else:
        raise AssertionError("item_text=add without a text width was accepted")


def test_item_text_model_saves_its_text_and_reloads_to_the_same_scores(
    tiny_backbones, tiny_data_dir, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from seqrec.baselines.sasrec import SASRec
    from seqrec.cli import main
    from seqrec.data.features import FeatureStore

    torch.set_num_threads(1)
    args = [
        "train",
        "--config",
        str(tiny_yaml(tiny_backbones("bert"), tmp_path)),
        "--data",
        str(tiny_data_dir),
    ]
    out = tmp_path / "run"
    extra = [
        "train.model=sasrec",
        "sasrec.d_model=8",
        "sasrec.heads=1",
        "sasrec.item_text=add",
        "train.eval_max_users=0",
    ]
    assert main([*args, "--output", str(out), *extra]) == 0
    model = SASRec.from_pretrained(out / "best")  # no feature cache needed: the text is in the weights
    features = FeatureStore.load(out / "features")
    assert model.item_text is not None
    assert torch.equal(model.item_text[1:], torch.as_tensor(features.items).float())
    saved = load_file(str(out / "best" / "model.safetensors"))
    assert torch.equal(saved["item_text"], model.item_text)
    batch = {"input_items": torch.tensor([[0, 1, 2], [3, 4, 5]])}
    again = SASRec.from_pretrained(out / "best")
    assert torch.equal(model.eval().score_batch(batch), again.eval().score_batch(batch))
