"""`seqrec publish`: the folder, its model card, the (mocked) upload, the token, and bad folders."""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seqrec.cli import main
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
SECRET = "hf_TESTSECRETtoken1234567890abcdef"
USERS = [0, 5, 17]
METRICS = {
    "hr@10": 0.5,
    "ndcg@10": 0.31,
    "mrr": 0.22,
    "split": "test",
    "n_users": 40,
    "protocol": {
        "protocol": "full",
        "label": "full ranking over the catalogue",
        "candidates": "all items",
        "masking": "items of the user's input history (never the target)",
        "tie_rule": "pessimistic",
        "negatives_file": "/home/someone/private/negatives.npz",
    },
    "slices": {},
    "checkpoint": "/home/someone/runs/best",
}


@pytest.fixture(scope="module")
def saved(tiny_backbones, tiny_data, tiny_data_dir, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A tiny LoRA model after one step, saved with data_dir and an eval-test/metrics.json; and its
    serve scores for USERS."""
    with single_thread():
        torch.manual_seed(0)
        cfg = tiny_run_config(tiny_backbones("llama"), **{"train.lr": 0.05, "train.backbone_lr": 0.05})
        cfg.data_dir = str(tiny_data_dir)
        model = SeqRecModel.from_data(cfg, tiny_data)
        model.build_item_cache(item_tokens(model, tiny_data))
        opt = torch.optim.AdamW(model.param_groups(model.cfg.train))
        model.train()
        model(make_batch(model, tiny_data, [0, 1, 2, 3])).loss.backward()
        opt.step()
        model.on_step_end(1)
        model.eval()
        path = tmp_path_factory.mktemp("publish") / "model"
        model.save_pretrained(path)
        (path / "eval-test").mkdir()
        (path / "eval-test" / "metrics.json").write_text(json.dumps(METRICS))
        return path, _scores(model, tiny_data)


def _scores(model: SeqRecModel, data) -> torch.Tensor:
    model.build_item_cache(item_tokens(model, data))
    model.prepare_eval()
    with torch.no_grad():
        return model.score_batch(make_batch(model, data, USERS, split="serve"))


def _publish(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["publish", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def dry_run(saved, tmp_path_factory) -> Path:
    path, _ = saved
    out = tmp_path_factory.mktemp("dry") / "folder"
    assert (
        main(
            [
                "publish",
                "--checkpoint",
                str(path),
                "--repo-id",
                "acme/tiny-seqrec",
                "--dry-run",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_dry_run_folder_holds_only_weights_config_and_card(dry_run, tiny_data_dir, tiny_backbones):
    assert sorted(p.name for p in dry_run.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "head.safetensors",
        "manifest.json",
        "seqrec_config.json",
        "seqrec_model.json",
    ]
    adapter = json.loads((dry_run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_backbones("llama"))
    config = json.loads((dry_run / "seqrec_config.json").read_text())
    assert config["data_dir"] == "" and config["model"]["backbone"]["trust_remote_code"] is False
    for name in ("seqrec_config.json", "README.md"):  # no path to the training data anywhere
        assert str(tiny_data_dir) not in (dry_run / name).read_text()


def test_card_parses_with_huggingface_hub_and_has_the_metadata(dry_run, tiny_data_dir):
    from huggingface_hub import ModelCard

    card = ModelCard.load(dry_run / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert {"seqrec", "recommendation", "sequential-recommendation", "peft", "lora"} <= set(meta["tags"])
    assert "datasets" not in meta  # a local folder is not a data set others can find
    assert tiny_data_dir.name not in card.content
    results = {r.metric_type: r for r in card.data.eval_results}
    assert {k: r.metric_value for k, r in results.items()} == {"hr@10": 0.5, "ndcg@10": 0.31, "mrr": 0.22}
    protocol = results["ndcg@10"].metric_args
    assert protocol["protocol"] == "full" and protocol["tie_rule"] == "pessimistic"
    assert "negatives_file" not in protocol and "/home/someone" not in card.content
    assert results["ndcg@10"].dataset_split == "test"
    assert 'SeqRecModel.from_pretrained("acme/tiny-seqrec")' in card.text
    assert "| 0.5000 | 0.3100 | 0.2200 |" in card.text


def test_published_folder_loads_with_the_same_scores(dry_run, saved, tiny_data):
    _, scores = saved
    assert torch.equal(_scores(SeqRecModel.from_pretrained(dry_run), tiny_data), scores)


def test_repo_id_loads_through_the_hub_download(dry_run, saved, tiny_data, monkeypatch):
    """from_pretrained("ORG/NAME") downloads JSON/safetensors only and gives the same scores."""
    import huggingface_hub

    _, scores = saved
    asked = {}

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(dry_run)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = SeqRecModel.from_pretrained("acme/tiny-seqrec")
    assert asked["repo_id"] == "acme/tiny-seqrec"
    assert not any(p.endswith((".bin", ".pt", ".pkl", ".py")) for p in asked["allow_patterns"])
    assert torch.equal(_scores(loaded, tiny_data), scores)


def test_base_model_flag_names_the_hub_base(saved, tmp_path, capsys):
    path, _ = saved
    out = tmp_path / "folder"
    args = ["--checkpoint", str(path), "--repo-id", "acme/x", "--dry-run", "--out", str(out)]
    code, stdout, _ = _publish(
        [*args, "--base-model", "acme/tiny-base", "--license", "mit", "--dataset", "beauty"], capsys
    )
    assert code == 0 and "warning" not in stdout
    from huggingface_hub import ModelCard

    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert (
        meta["base_model"] == "acme/tiny-base" and meta["license"] == "mit" and meta["datasets"] == ["beauty"]
    )
    assert (
        json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "acme/tiny-base"
    )
    assert (
        json.loads((out / "seqrec_config.json").read_text())["model"]["backbone"]["name"] == "acme/tiny-base"
    )
    # Without --base-model, a local base path is reported (it cannot be loaded by others).
    code, stdout, _ = _publish([*args, "--overwrite", "--no-verify"], capsys)
    assert code == 0 and "not a hub id" in stdout
    code, _, err = _publish([*args, "--overwrite", "--license", "Not A License"], capsys)
    assert code == 2 and "--license" in err


# ---- the token ------------------------------------------------------------------------------------


def test_dry_run_never_shows_the_token(saved, tmp_path, monkeypatch, capsys, caplog):
    path, _ = saved
    monkeypatch.setenv("HF_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    code, out, err = _publish(
        [
            "--checkpoint",
            str(path),
            "--repo-id",
            "acme/x",
            "--dry-run",
            "--out",
            str(tmp_path / "f"),
            "--no-verify",
        ],
        capsys,
    )
    assert code == 0
    written = (
        "".join(p.read_text() for p in (tmp_path / "f").glob("*.json"))
        + (tmp_path / "f" / "README.md").read_text()
    )
    assert SECRET not in out + err + caplog.text + written


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi; logs like a careless library would."""

    calls: list[tuple[str, dict]] = []
    fail = False

    def __init__(self, token=None, **kw):
        self.token = token
        FakeHfApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kw):
        logging.getLogger("urllib3.connectionpool").debug(
            "POST /api/repos/create Authorization: Bearer %s", self.token
        )
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return type("RepoUrl", (), {"url": f"https://huggingface.co/{repo_id}"})()

    def upload_folder(self, **kw):
        FakeHfApi.calls.append(
            ("upload_folder", {**kw, "files": sorted(p.name for p in Path(kw["folder_path"]).iterdir())})
        )
        if FakeHfApi.fail:
            raise RuntimeError(f"401 Unauthorized for token {self.token}")


@pytest.mark.parametrize("fail", [False, True])
def test_upload_uses_the_token_but_never_shows_it(saved, monkeypatch, capsys, caplog, fail):
    import huggingface_hub

    path, _ = saved
    FakeHfApi.calls, FakeHfApi.fail = [], fail
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("MY_HUB_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    args = [
        "--checkpoint",
        str(path),
        "--repo-id",
        "acme/tiny",
        "--private",
        "--token-env",
        "MY_HUB_TOKEN",
        "--no-verify",
    ]
    code, out, err = _publish(args, capsys)
    assert SECRET not in out + err + caplog.text
    calls = dict(FakeHfApi.calls)
    assert calls["init"]["token"] == SECRET  # the token reached the hub client
    assert calls["create_repo"]["exist_ok"] is True and calls["create_repo"]["private"] is True
    assert calls["upload_folder"]["repo_id"] == "acme/tiny"
    assert {"README.md", "adapter_model.safetensors", "head.safetensors"} <= set(
        calls["upload_folder"]["files"]
    )
    if fail:
        assert code == 2 and "uploading to acme/tiny failed" in err and "***" in err
    else:
        assert code == 0 and "uploaded: https://huggingface.co/acme/tiny" in out
        assert "Bearer ***" in caplog.text  # the library's log line was kept, with the token masked


def test_upload_without_a_token_fails_before_any_work(saved, monkeypatch, capsys):
    path, _ = saved
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    code, _, err = _publish(
        ["--checkpoint", str(path), "--repo-id", "acme/x", "--token-env", "NO_SUCH_TOKEN_VAR"], capsys
    )
    assert code == 2 and "NO_SUCH_TOKEN_VAR" in err


# ---- bad folders (loading never runs code from the folder) ------------------------------------------------


class _Payload:
    """Unpickling this touches a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_copy(saved, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(saved[0], dst)
    return dst


def _fails_everywhere(folder: Path, pattern: str, capsys) -> None:
    """from_pretrained, `seqrec recommend` and `seqrec publish --dry-run` all name the bad file."""
    with pytest.raises(CheckpointError, match=pattern):
        SeqRecModel.from_pretrained(folder)
    code = main(["recommend", "--checkpoint", str(folder), "--user", "U001"])
    assert code == 2 and re.search(pattern, capsys.readouterr().err)
    code = main(
        [
            "publish",
            "--checkpoint",
            str(folder),
            "--repo-id",
            "a/b",
            "--dry-run",
            "--out",
            str(folder.parent / "pub"),
        ]
    )
    assert code == 2 and re.search(pattern, capsys.readouterr().err)
    assert not (folder.parent / "pub").exists()


def test_missing_adapter_is_named(saved, tmp_path, capsys):
    folder = _bad_copy(saved, tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    _fails_everywhere(folder, r"adapter_model\.safetensors is missing", capsys)


def test_wrong_shapes_are_named(saved, tmp_path, capsys):
    folder = _bad_copy(saved, tmp_path)
    head = load_file(str(folder / "head.safetensors"))
    head["fusion.mlp.0.weight"] = torch.zeros(3, 3)
    save_file(head, str(folder / "head.safetensors"))
    seal_model_folder(folder)  # consistent but of the wrong shape (the manifest would refuse it first)
    _fails_everywhere(folder, r"head\.safetensors: tensor fusion\.mlp\.0\.weight has shape \[3, 3\]", capsys)


@pytest.mark.parametrize("name", ["adapter_model.bin", "head.pt", "adapter_model.safetensors"])
def test_pickle_in_place_of_safetensors_is_refused_unopened(saved, tmp_path, capsys, name):
    folder = _bad_copy(saved, tmp_path)
    marker = tmp_path / "pickle-was-executed"
    stem = name.split(".")[0]
    (folder / f"{stem}.safetensors").unlink()
    (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
    pattern = "pickle" if not name.endswith(".safetensors") else "not a readable safetensors file"
    _fails_everywhere(folder, rf"{stem}\.(bin|pt|safetensors).*{pattern}|{pattern}.*{stem}", capsys)
    assert not marker.exists()


def test_full_finetune_backbone_pickle_is_refused(tiny_backbones, tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_backbones("bert"), **{"model.adapter.method": "full"})
    folder = tmp_path / "full"
    SeqRecModel.from_data(cfg, tiny_data).save_pretrained(folder)
    weights = folder / "backbone" / "model.safetensors"
    weights.unlink()
    marker = tmp_path / "pickle-was-executed"
    (folder / "backbone" / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    save_file({"unrelated": torch.zeros(1)}, str(folder / "backbone" / "extra.safetensors"))
    try:
        with pytest.raises(CheckpointError, match=r"pytorch_model\.bin"):
            SeqRecModel.from_pretrained(folder)
    finally:
        assert not marker.exists()  # the pickle is refused before anything reads it


def test_public_config_blanks_local_paths_only():
    from seqrec.config import RunConfig
    from seqrec.serving.publish import public_config

    cfg = RunConfig(data_dir="data/beauty")
    cfg.train.output_dir = "/home/someone/runs/x"
    cfg.eval.candidates_file = "~/candidates.jsonl"
    cfg.train.init_from = "acme/stage1"  # a hub id, not a path here: kept
    cfg.model.backbone.trust_remote_code = True
    public, removed = public_config(cfg, base_model="acme/base")
    assert sorted(removed) == ["data_dir", "eval.candidates_file", "train.output_dir"]
    assert public.data_dir == "" and public.eval.candidates_file is None
    assert public.train.output_dir == "runs/seqrec" and public.train.init_from == "acme/stage1"
    assert public.model.backbone.name == "acme/base" and public.model.backbone.trust_remote_code is False
    assert cfg.data_dir == "data/beauty"  # the caller's config is untouched
