"""The LoRA path as it was first run on real data (Beauty, benchmarks/bench_lora.py): joint stage
(MiniLM + LoRA tuned with the head) then the head on features re-encoded with the tuned adapter.
Regression tests for what that run needed or exposed, on tiny models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from seqrec.training.trackers import Progress, StepMeter


def test_step_meter_reports_backbone_texts_per_second(caplog: pytest.LogCaptureFixture) -> None:
    """Joint-stage throughput in texts (windows + live items through the backbone) per second, not
    only users and tokens: the unit the encoder benchmarks use (benchmarks/results/encode.md)."""
    from accelerate import Accelerator

    meter = StepMeter(Accelerator(cpu=True))
    meter.add(torch.tensor(1.0), {"tokens": 100, "nonpad_tokens": 80, "texts": 12}, samples=4)
    meter.add(torch.tensor(3.0), {"tokens": 50, "nonpad_tokens": 40, "texts": 6}, samples=4)
    meter.t0 -= 2.0  # pretend the two steps took (at least) two seconds
    report = meter.report()
    assert report["loss"] == pytest.approx(2.0)
    assert 0 < report["texts_per_s"] <= 18 / 2.0
    assert report["tokens_per_s"] / report["texts_per_s"] == pytest.approx(120 / 18)
    with caplog.at_level(logging.INFO, logger="seqrec.training.trackers"):
        Progress(total=2, initial=0, enabled=True, memory_kind="cpu_peak_rss").show(2, 0, report)
    assert "texts/s" in caplog.text
    # A head-stage step (cached features, no backbone) has no texts: no rate is made up.
    meter.add(torch.tensor(1.0), {}, samples=4)
    assert "texts_per_s" not in meter.report()


def _tiny_yaml(backbone: Path, folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(
        f"""
model:
  backbone: {{name: {backbone}}}
  adapter: {{r: 4, alpha: 8, dropout: 0.0}}
  encoder: {{micro_batch_size: 8}}
  aggregator: {{d_model: 16, layers: 1, heads: 2, dropout: 0.0, time_buckets: 8}}
  profile: {{enabled: false}}
  fusion: {{hidden: 32, dropout: 0.0}}
  head: {{dim: 16}}
  items: {{mode: text}}
window: {{size: 1, max_windows: 4}}
text: {{time: none, show_behavior: false, max_window_tokens: 24, max_item_tokens: 24}}
train: {{epochs: 1, batch_size: 8, tracker: none, lr: 0.01, backbone_lr: 0.05}}
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.usefixtures("torch_single_thread")
def test_evaluate_refuses_features_rebuilt_for_another_encoder(
    tiny_backbones, tiny_data_dir, tmp_path, monkeypatch, caplog
) -> None:
    """A head trained on LoRA-tuned features, whose feature folder is then rebuilt for the frozen
    encoder (what a shared cache folder, like the benchmark's Beauty cache, would do): `evaluate`
    used any folder holding a manifest, so it silently scored the tuned head on frozen features.
    It must see the mismatch and encode with the model's own backbone + adapter instead."""
    from seqrec.cli import main
    from seqrec.data.features import FeatureStore

    monkeypatch.setenv("SEQREC_CACHE", str(tmp_path / "cache"))
    cfg = _tiny_yaml(tiny_backbones("bert"), tmp_path)
    common = ["train", "--config", str(cfg), "--data", str(tiny_data_dir)]
    feats = tmp_path / "features"
    joint, head, frozen = tmp_path / "joint", tmp_path / "head", tmp_path / "frozen"
    assert main([*common, "--output", str(joint), "train.max_steps=3"]) == 0
    init = f"train.init_from={joint / 'best'}"
    assert main([*common, "--output", str(head), "--stage", "head", init, f"train.features_dir={feats}"]) == 0
    tuned_items = FeatureStore.load(feats).items.clone()

    def test_metrics(out: str) -> dict:
        args = [
            "evaluate",
            "--checkpoint",
            str(head / "best"),
            "--split",
            "test",
            "--out",
            str(tmp_path / out),
        ]
        assert main(args) == 0
        return json.loads((tmp_path / out / "metrics.json").read_text())

    with_cache = test_metrics("eval-cached")
    # Another run rebuilds the same folder for the frozen encoder.
    assert main([*common, "--output", str(frozen), "--stage", "head", f"train.features_dir={feats}"]) == 0
    assert not torch.allclose(FeatureStore.load(feats).items, tuned_items, atol=1e-4)  # the hazard is real
    with caplog.at_level(logging.WARNING, logger="seqrec.evaluation.cli"):
        after = test_metrics("eval-after-rebuild")
    for k in ("ndcg@10", "hr@10", "mrr", "auc"):
        assert after[k] == pytest.approx(with_cache[k], abs=1e-6), k
    assert "features of another encoder" in caplog.text


@pytest.mark.usefixtures("torch_single_thread")
def test_live_positives_cannot_be_told_from_stale_cached_negatives(tiny_backbones, tiny_data) -> None:
    """Joint stage with a stale item cache (between refreshes): the batch's positives are encoded
    live, every other candidate comes from the cache. Substituting the live VALUES let the head
    learn 'live = positive' (on Beauty the joint loss fell from 8.1 to 4.1 in 15 steps, far below
    the frozen model's 8.1 plateau, with nothing learnt). The loss must equal the cache-only loss
    (same values for every candidate), while the gradient still reaches the adapter through the
    positives' live encoding."""
    from seqrec.modeling import SeqRecModel
    from tests.tiny_models import item_tokens, make_batch, tiny_run_config

    torch.manual_seed(0)
    cfg = tiny_run_config(
        tiny_backbones("bert"),
        **{
            "model.items.mode": "text",
            "model.items.cache_refresh_steps": 0,
            "model.adapter.dropout": 0.0,
            "model.items.live_positives": True,
        },
    )
    model = SeqRecModel.from_data(cfg, tiny_data)
    model.build_item_cache(item_tokens(model, tiny_data))
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora
    with torch.no_grad():  # the adapter moves on after the cache was built: the cache is stale
        for p in lora:
            p.add_(0.2 * torch.randn_like(p))
    model.eval()  # no dropout anywhere; the encoder still takes gradients
    batch = make_batch(model, tiny_data, [0, 1, 2, 3, 4, 5])
    assert "item_input_ids" in batch and len(batch["item_live_idx"])
    cache_only = {k: v for k, v in batch.items() if not k.startswith("item_")}

    with_live = model(batch).loss
    without = model(cache_only).loss
    assert with_live.item() == pytest.approx(without.item(), rel=1e-6, abs=1e-6)

    grads = torch.autograd.grad(with_live, lora, allow_unused=True)
    window_only = torch.autograd.grad(model(cache_only).loss, lora, allow_unused=True)
    delta = sum(
        float((a - b).abs().sum()) for a, b in zip(grads, window_only) if a is not None and b is not None
    )
    assert delta > 0  # the positives' live encoding adds its own gradient to the adapter


def test_bench_lora_reads_throughput_losses_and_decides_on_validation(tmp_path: Path) -> None:
    """benchmarks/bench_lora.py takes its figures from the runs' own log lines and validation
    history, never test: the first throughput window (the catalogue encoding) is left out, and the
    decision compares the two runs only at steps both validated."""
    import importlib.util
    import sys

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location("bench_lora", bench_dir / "bench_lora.py")
        assert spec is not None and spec.loader is not None
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(bench_dir))
    log = tmp_path / "joint.log"
    line = (
        "10:42:48 INFO seqrec.training.trackers: step {s}/50 | epoch 0 | loss {l} | lr 1.99e-04 | grad 9.53 | "
        "{u} samples/s | {t} tok/s (nonpad 84%) | {x} texts/s | peak mem 4000 MB (cpu_peak_rss)"
    )
    log.write_text(
        "\n".join(
            [
                line.format(s=5, l="8.10", u=0.2, t=69, x=2.2),  # holds the catalogue encoding
                "unrelated",
                line.format(s=10, l="8.05", u=1.0, t=400, x=13.0),
                line.format(s=15, l="8.00", u=2.0, t=500, x=15.0),
            ]
        ),
        encoding="utf-8",
    )
    tp = bench.step_throughput(log)
    assert tp["last_step_logged"] == 15 and tp["log_windows_averaged"] == 2
    assert tp["users_per_s"] == pytest.approx(1.5) and tp["texts_per_s"] == pytest.approx(14.0)
    assert bench.train_losses(log) == [(5, 8.10), (10, 8.05), (15, 8.00)]

    ref = [{"step": 175, "ndcg@10": 0.020}, {"step": 350, "ndcg@10": 0.025}, {"step": 700, "ndcg@10": 0.030}]
    head = [{"step": 175, "ndcg@10": 0.021}, {"step": 350, "ndcg@10": 0.024}, {"step": 600, "ndcg@10": 0.9}]
    d = bench.decide(head, ref)  # step 600 (a stop mid-epoch) has no reference: not compared
    assert d["steps"] == [175, 350] and d["head_valid"] == 0.024 and d["reference_valid"] == 0.025
    assert d["status"] == "dropped"
    assert bench.decide([{"step": 1, "ndcg@10": 1.0}], ref)["status"].startswith("undecided")


@pytest.mark.usefixtures("torch_single_thread")
def test_init_from_a_model_without_adapters_loads_its_backbone_into_a_lora_run(
    tiny_backbones, tiny_data, tmp_path, caplog
) -> None:
    """The Beauty joint run starts from the frozen beauty-text model (train.init_from): its log
    said '173 missing, 101 unexpected keys', because a model without adapters names a backbone
    weight ``encoder.backbone.X`` and a LoRA model ``encoder.backbone.base_model.model.X`` (or
    ``...base_layer.weight``). Harmless for a frozen source (same pretrained weights), but a fully
    fine-tuned source lost its tuned backbone silently. Names are now matched across wrappings."""
    from seqrec.modeling import SeqRecModel
    from seqrec.training.seqrec_setup import _load_weights
    from tests.tiny_models import tiny_run_config

    bert = tiny_backbones("bert")
    torch.manual_seed(0)
    full = SeqRecModel.from_data(
        tiny_run_config(bert, **{"model.adapter.method": "full", "model.items.mode": "text"}), tiny_data
    )
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.01 * torch.randn_like(p))  # tuned backbone and head
    full.save_pretrained(tmp_path / "full")
    torch.manual_seed(1)
    lora = SeqRecModel.from_data(tiny_run_config(bert, **{"model.items.mode": "text"}), tiny_data)
    with caplog.at_level(logging.INFO, logger="seqrec.training.seqrec_setup"):
        _load_weights(lora, str(tmp_path / "full"))
    source = full.state_dict()

    def plain(key: str) -> str:  # the name without peft's wrapping
        return key.replace("base_model.model.", "").replace(".base_layer.", ".")

    target = {plain(k): v for k, v in lora.state_dict().items()}
    backbone = [k for k in source if k.startswith("encoder.backbone.")]
    assert backbone
    for k, v in source.items():
        torch.testing.assert_close(target[plain(k)], v, msg=k)
    n_lora = sum("lora_" in k for k in lora.state_dict())
    assert (
        f"({n_lora} missing keys, {n_lora} of them adapter weights that start fresh; 0 unexpected"
        in caplog.text
    )


@pytest.mark.usefixtures("torch_single_thread")
def test_joint_stage_by_default_tunes_the_encoder_through_windows_only(tiny_backbones, tiny_data) -> None:
    """Beauty, 50 joint steps with the positives' live encoding (straight-through): the loss rose
    from 8.1 to 9.4 (log 12,101 = 9.4) and validation NDCG@10 fell to 0 (AUC 0.53): only positives
    got item-side gradients, a pull of every item encoding toward the user states with no push
    from the (cached) negatives, so the shared encoder collapsed. By default the positives are not
    encoded live: the backbone sees only windows, and its gradient comes from the loss the model
    sees (user states against the cached catalogue)."""
    from seqrec.modeling import SeqRecModel
    from tests.tiny_models import item_tokens, make_batch, tiny_run_config

    torch.manual_seed(0)
    cfg = tiny_run_config(
        tiny_backbones("bert"), **{"model.items.mode": "text", "model.adapter.dropout": 0.0}
    )
    assert cfg.model.items.live_positives is False
    model = SeqRecModel.from_data(cfg, tiny_data)
    model.build_item_cache(item_tokens(model, tiny_data))
    model.eval()
    batch = make_batch(model, tiny_data, [0, 1, 2, 3])
    out = model(batch)
    assert out.metrics["texts"] == batch["window_input_ids"].shape[0]  # windows only
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    grads = torch.autograd.grad(out.loss, lora, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the windows still tune the adapter
