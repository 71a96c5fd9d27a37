"""save_pretrained / from_pretrained: exact round trips, peft compatibility, and bad folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seqrec.errors import CheckpointError
from seqrec.manifest import seal_model_folder
from seqrec.modeling import SeqRecModel
from tests.tiny_models import (  # noqa: F401  (fixtures)
    item_tokens,
    make_batch,
    single_thread,
    tiny_backbones_fixture,
    tiny_run_config,
    torch_single_thread_fixture,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

EVAL_USERS = [0, 4, 9]


def _trained(model: SeqRecModel, tiny_data, steps: int = 2) -> SeqRecModel:
    """A few optimizer steps, so adapters (lora_B starts at zero) and head are not at their init."""
    opt = torch.optim.AdamW(model.param_groups(model.cfg.train))
    model.train()
    for _ in range(steps):
        out = model(make_batch(model, tiny_data, [0, 1, 2, 3]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()


def _scores(model: SeqRecModel, tiny_data) -> torch.Tensor:
    model.eval()
    model.build_item_cache(item_tokens(model, tiny_data))
    with torch.no_grad():
        return model.score_batch(make_batch(model, tiny_data, EVAL_USERS, split="valid"))


@pytest.fixture(scope="module")
def lora_dir(tiny_backbones, tiny_data, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    with single_thread():
        torch.manual_seed(0)
        cfg = tiny_run_config(tiny_backbones("llama"), **{"train.lr": 0.05, "train.backbone_lr": 0.05})
        model = SeqRecModel.from_data(cfg, tiny_data)
        model.build_item_cache(item_tokens(model, tiny_data))
        _trained(model, tiny_data)
        out = tmp_path_factory.mktemp("saved") / "lora"
        model.save_pretrained(out)
        return out, _scores(model, tiny_data)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_lora_round_trip_gives_identical_scores(lora_dir, tiny_data):
    path, scores = lora_dir
    loaded = SeqRecModel.from_pretrained(path)
    assert torch.equal(_scores(loaded, tiny_data), scores)


def test_adapter_file_holds_only_adapter_weights_and_names_the_real_base(lora_dir, tiny_backbones):
    path, _ = lora_dir
    adapter = load_file(str(path / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter), sorted(adapter)[:5]
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained, not the init
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_backbones("llama"))
    head = load_file(str(path / "head.safetensors"))
    assert not any(k.startswith("encoder.") for k in head)
    meta = json.loads((path / "seqrec_model.json").read_text())
    assert meta["feature_dim"] == 32 and meta["n_items"] == 30 and meta["has_backbone"]
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))


def test_adapter_loads_with_plain_peft_on_the_base(lora_dir, tiny_backbones):
    from peft import PeftModel
    from transformers import AutoModel

    path, _ = lora_dir
    base = AutoModel.from_pretrained(str(tiny_backbones("llama")))
    peft_model = PeftModel.from_pretrained(base, str(path))
    ours = SeqRecModel.from_pretrained(path).encoder.backbone
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(input_ids=ids).last_hidden_state, ours(input_ids=ids).last_hidden_state
        )


def test_head_stage_model_round_trips(tiny_data, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_run_config("unused", **{"model.backbone.hidden_size": 12})
    model = SeqRecModel.from_data(cfg, tiny_data, load_backbone=False).eval()
    feats = torch.nn.functional.normalize(torch.randn(tiny_data.n_items, 12), dim=-1)
    model.set_item_features(feats)
    with torch.no_grad():
        model.head.log_inv_temperature.fill_(2.0)  # a non-init value that must survive the trip
    model.save_pretrained(tmp_path / "head")
    # Serving needs the base backbone to encode new windows; "unused" does not exist: one clear line.
    with pytest.raises(CheckpointError, match=r"its backbone cannot be loaded.*'unused'"):
        SeqRecModel.from_pretrained(tmp_path / "head")
    loaded = SeqRecModel.from_pretrained(tmp_path / "head", load_backbone=False)
    assert loaded.encoder is None
    loaded.set_item_features(feats)
    assert torch.equal(loaded.item_embeddings(), model.item_embeddings())
    assert float(loaded.head.log_inv_temperature) == 2.0


@pytest.mark.parametrize("method", ["full", "frozen"])
def test_full_and_frozen_round_trip(tiny_backbones, tiny_data, tmp_path, method):
    torch.manual_seed(0)
    cfg = tiny_run_config(tiny_backbones("bert"), **{"model.adapter.method": method, "train.lr": 0.05})
    model = SeqRecModel.from_data(cfg, tiny_data)
    model.build_item_cache(item_tokens(model, tiny_data))
    _trained(model, tiny_data, steps=1)
    model.save_pretrained(tmp_path / method)
    assert not (tmp_path / method / "adapter_model.safetensors").exists()
    assert (tmp_path / method / "backbone").is_dir() == (method == "full")
    loaded = SeqRecModel.from_pretrained(tmp_path / method)
    assert torch.equal(_scores(loaded, tiny_data), _scores(model, tiny_data))


def test_given_state_dict_is_what_gets_saved(tiny_data, tmp_path):
    cfg = tiny_run_config("unused", **{"model.backbone.hidden_size": 12})
    model = SeqRecModel.from_data(cfg, tiny_data, load_backbone=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["aggregator.proj.weight"].fill_(0.5)  # e.g. a ZeRO-3 gathered copy; live params differ
    model.save_pretrained(tmp_path / "m", state_dict=state)
    loaded = SeqRecModel.from_pretrained(tmp_path / "m", load_backbone=False)
    assert torch.all(loaded.aggregator.proj.weight == 0.5)
    assert not torch.all(model.aggregator.proj.weight == 0.5)


def test_saving_again_replaces_the_folder_atomically(tiny_data, tmp_path):
    cfg = tiny_run_config("unused", **{"model.backbone.hidden_size": 12})
    model = SeqRecModel.from_data(cfg, tiny_data, load_backbone=False)
    model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left behind


# ---- bad folders ----------------------------------------------------------------------------------


def test_missing_adapter_is_a_clear_error(lora_dir, tmp_path):
    path = _copy(lora_dir[0], tmp_path)
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors is missing"):
        SeqRecModel.from_pretrained(path)


def test_pickle_in_place_of_safetensors_is_refused(lora_dir, tmp_path):
    path = _copy(lora_dir[0], tmp_path)
    tensors = load_file(str(path / "adapter_model.safetensors"))
    (path / "adapter_model.safetensors").unlink()
    torch.save(tensors, path / "adapter_model.bin")
    with pytest.raises(CheckpointError, match=r"adapter_model\.bin \(a pickle file\)"):
        SeqRecModel.from_pretrained(path)
    (path / "head.safetensors").rename(path / "head.pt")
    with pytest.raises(CheckpointError, match=r"head\.pt"):
        SeqRecModel.from_pretrained(path, load_backbone=False)


def test_wrong_shapes_are_a_clear_error(lora_dir, tmp_path):
    path = _copy(lora_dir[0], tmp_path)
    head = load_file(str(path / "head.safetensors"))
    head["aggregator.proj.weight"] = torch.zeros(3, 3)
    save_file(head, str(path / "head.safetensors"))
    seal_model_folder(path)  # a consistent folder of the wrong shape (the manifest would refuse it first)
    with pytest.raises(
        CheckpointError, match=r"head\.safetensors: tensor aggregator\.proj\.weight has shape"
    ):
        SeqRecModel.from_pretrained(path, load_backbone=False)

    adapter = load_file(str(path / "adapter_model.safetensors"))
    key = next(k for k in adapter if "lora_A" in k)
    adapter[key] = torch.zeros(1, 1)
    save_file(adapter, str(path / "adapter_model.safetensors"))
    seal_model_folder(path)
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors: tensor"):
        SeqRecModel.from_pretrained(path)


def test_tampered_and_incomplete_folders(lora_dir, tmp_path):
    path = _copy(lora_dir[0], tmp_path)
    (path / "head.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        SeqRecModel.from_pretrained(path, load_backbone=False)
    (path / "seqrec_model.json").unlink()
    with pytest.raises(CheckpointError, match=r"seqrec_model\.json is missing"):
        SeqRecModel.from_pretrained(path)
    with pytest.raises(CheckpointError, match="not found"):
        SeqRecModel.from_pretrained(tmp_path / "does" / "not" / "exist")


def test_saved_config_cannot_turn_on_remote_code(lora_dir, tmp_path):
    path = _copy(lora_dir[0], tmp_path)
    cfg = json.loads((path / "seqrec_config.json").read_text())
    cfg["model"]["backbone"]["trust_remote_code"] = True
    (path / "seqrec_config.json").write_text(json.dumps(cfg))
    seal_model_folder(path)  # as if saved so (an edited file alone is refused by the manifest)
    loaded = SeqRecModel.from_pretrained(path, load_backbone=False)
    assert loaded.cfg.model.backbone.trust_remote_code is False


def test_hub_repo_id_resolves_through_the_local_hub_cache(lora_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--tiny-seqrec"
    shutil.copytree(lora_dir[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = SeqRecModel.from_pretrained("someone/tiny-seqrec", load_backbone=False)
    assert loaded.n_items == 30
    with pytest.raises(CheckpointError, match="Hugging Face Hub"):
        SeqRecModel.from_pretrained("someone/not-there")


def test_head_stage_folder_with_the_stage1_adapter_loads_the_backbone(lora_dir, tiny_data, tmp_path):
    """Two-stage flow: features came from base + stage-1 adapter; the head-stage folder carries that
    adapter, so the loaded model can encode new windows exactly like the features were made."""
    stage1 = SeqRecModel.from_pretrained(lora_dir[0])
    cfg = stage1.cfg
    head = SeqRecModel.from_data(cfg, tiny_data, load_backbone=False)
    head.save_pretrained(tmp_path / "head")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy2(lora_dir[0] / name, tmp_path / "head" / name)
    seal_model_folder(tmp_path / "head")  # as the head-stage training does after copying
    loaded = SeqRecModel.from_pretrained(tmp_path / "head")
    assert loaded.encoder is not None
    texts = ["viewed: red skin care product 1"]
    torch.testing.assert_close(loaded.encode_texts(texts), stage1.encode_texts(texts))
    assert SeqRecModel.from_pretrained(tmp_path / "head", load_backbone=False).encoder is None
