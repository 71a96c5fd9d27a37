"""Pooling, padding, micro-batching and backbone loading of the text encoder."""

from __future__ import annotations

import pytest
import torch

from seqrec.config import AdapterConfig, BackboneConfig, ConfigError, EncoderConfig
from seqrec.modeling.adapters import apply_adapters
from seqrec.modeling.backbone import detect_is_decoder, load_backbone, real_base_name
from seqrec.modeling.encoder import (
    TextEncoder,
    pad_token_lists,
    plan_micro_batches,
    pool_hidden,
    repack_right,
)
from tests.tiny_models import tiny_backbones_fixture, torch_single_thread_fixture  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _left_pad(ids: torch.Tensor, mask: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's real tokens to the right end."""
    out_ids, out_mask = torch.full_like(ids, pad), torch.zeros_like(mask)
    for i in range(len(ids)):
        n = int(mask[i].sum())
        if n:
            out_ids[i, -n:], out_mask[i, -n:] = ids[i, :n], 1
    return out_ids, out_mask


# ---- pure functions ---------------------------------------------------------------------------


def test_pool_last_picks_last_real_token_for_left_and_right_padding():
    lengths = [3, 5, 1]
    width = 6
    right = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    left = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    hidden = torch.arange(width, dtype=torch.float).view(1, width, 1).expand(3, width, 2)  # value = position
    assert pool_hidden(hidden, right, "last")[:, 0].tolist() == [2.0, 4.0, 0.0]
    assert pool_hidden(hidden, left, "last")[:, 0].tolist() == [5.0, 5.0, 5.0]


def test_pool_mean_ignores_padding():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    hidden = torch.arange(4, dtype=torch.float).view(1, 4, 1).expand(2, 4, 1)
    assert pool_hidden(hidden, mask, "mean")[:, 0].tolist() == [0.5, 2.0]


def test_repack_right_is_independent_of_padding_side():
    ids, mask = pad_token_lists([[5, 6, 7], [8], [9, 10]], pad_id=0)
    left_ids, left_mask = _left_pad(ids, mask, 0)
    rows = torch.tensor([2, 0])
    a = repack_right(ids, mask, rows, pad_id=0)
    b = repack_right(left_ids, left_mask, rows, pad_id=0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].tolist() == [[9, 10, 0], [5, 6, 7]]
    assert a[1].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_micro_batch_plan_covers_every_row_once_and_respects_caps():
    lengths = torch.tensor([50, 3, 40, 4, 5, 45, 2, 48])
    plan = plan_micro_batches(lengths, max_rows=3, max_tokens=100)
    rows = torch.cat(plan).tolist()
    assert sorted(rows) == list(range(len(lengths)))
    for mb in plan:
        assert len(mb) <= 3
        assert len(mb) == 1 or len(mb) * int(lengths[mb].max()) <= 100

    # Bucketing pads far less than taking rows in input order.
    def padded(p: list[torch.Tensor]) -> int:
        return sum(len(mb) * int(lengths[mb].max()) for mb in p)

    assert padded(plan_micro_batches(lengths, 4)) < padded(plan_micro_batches(lengths, 4, sort=False))


def test_alias_names_map_to_real_hub_ids():
    assert real_base_name("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert real_base_name("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert real_base_name("/some/local/dir") == "/some/local/dir"


def test_decoder_detection_from_config():
    from transformers import BertConfig, LlamaConfig, Qwen2Config

    assert detect_is_decoder(LlamaConfig()) and detect_is_decoder(Qwen2Config())
    assert not detect_is_decoder(BertConfig())
    assert detect_is_decoder(BertConfig(), kind="decoder")


def test_qlora_on_cpu_is_a_clear_config_error(tiny_backbones):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA"):
        load_backbone(BackboneConfig(name=str(tiny_backbones("llama"))), quantize_4bit=True)


def test_missing_backbone_folder_is_an_error():
    with pytest.raises((OSError, ValueError)):
        load_backbone(BackboneConfig(name="/nonexistent/backbone/folder"))


# ---- the encoder on tiny backbones --------------------------------------------------------------


def _encoder(path, adapter: str = "lora", **enc) -> tuple[TextEncoder, object]:
    bb = load_backbone(BackboneConfig(name=str(path)))
    module = apply_adapters(
        bb.model, AdapterConfig(method=adapter, r=4, alpha=8, dropout=0.0), bb.model_type, bb.base_name
    )  # type: ignore[arg-type]
    encoder = TextEncoder(module, bb.is_decoder, EncoderConfig(**enc), bb.tokenizer.pad_token_id)
    encoder.eval()
    return encoder, bb


TEXTS = ["red skin care product 1", "viewed: blue makeup", "bought: green fragrance | brand: brand2 | x", "a"]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "bert"])
def test_encoder_invariant_to_padding_side_batch_mates_and_micro_batching(tiny_backbones, arch):
    encoder, bb = _encoder(tiny_backbones(arch), micro_batch_size=3)
    tok = bb.tokenizer  # type: ignore[attr-defined]
    lists = [tok(t)["input_ids"] + ([tok.eos_token_id] if bb.is_decoder else []) for t in TEXTS]  # type: ignore[attr-defined]
    ids, mask = pad_token_lists(lists, tok.pad_token_id)
    with torch.no_grad():
        right = encoder(ids, mask)
        left = encoder(*_left_pad(ids, mask, tok.pad_token_id))
        alone = torch.cat([encoder(*pad_token_lists([x], tok.pad_token_id)).emb for x in lists])
    torch.testing.assert_close(right.emb, left.emb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(right.emb, alone, atol=1e-5, rtol=1e-4)
    assert right.nonpad_tokens == sum(len(x) for x in lists)
    assert right.tokens >= right.nonpad_tokens
    assert torch.allclose(right.emb.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)  # L2 by default


def test_decoder_pools_the_final_eos_state_of_an_unpadded_forward(tiny_backbones):
    encoder, bb = _encoder(tiny_backbones("llama"), adapter="frozen", norm="none")
    tok = bb.tokenizer  # type: ignore[attr-defined]
    x = tok("viewed: blue makeup")["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        expected = bb.model(input_ids=torch.tensor([x])).last_hidden_state[0, -1]  # type: ignore[attr-defined]
        ids, mask = _left_pad(*pad_token_lists([x, [*x, *x]], tok.pad_token_id), tok.pad_token_id)
        got = encoder(ids, mask).emb[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_decoder_without_pad_token_falls_back_to_eos(tiny_backbones):
    bb = load_backbone(BackboneConfig(name=str(tiny_backbones("llama", with_pad=False))))
    assert bb.tokenizer.pad_token_id == bb.tokenizer.eos_token_id
    assert bb.is_decoder


def test_frozen_backbone_builds_no_graph_and_layernorm_standardizes(tiny_backbones):
    encoder, bb = _encoder(tiny_backbones("bert"), adapter="frozen", norm="layernorm")
    encoder.train()
    ids, mask = pad_token_lists([[2, 30, 3], [2, 31, 32, 3]], bb.tokenizer.pad_token_id)  # type: ignore[attr-defined]
    out = encoder(ids, mask)
    assert not out.emb.requires_grad
    torch.testing.assert_close(out.emb.mean(dim=-1), torch.zeros(2), atol=1e-5, rtol=0)


def test_adapter_records_the_real_base_model_name(tiny_backbones):
    bb = load_backbone(BackboneConfig(name=str(tiny_backbones("qwen2"))))
    peft_model = apply_adapters(bb.model, AdapterConfig(r=2), bb.model_type, "someone/real-base")
    assert peft_model.peft_config["default"].base_model_name_or_path == "someone/real-base"  # type: ignore[index]
    targets = set(peft_model.peft_config["default"].target_modules)  # type: ignore[index]
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_ranks_run_as_many_backbone_calls_as_the_busiest_rank(tiny_backbones, monkeypatch):
    """ZeRO-3 gathers parameters collectively: a rank with fewer micro-batches pads with dummies."""
    import seqrec.modeling.encoder as encoder_module

    encoder, bb = _encoder(tiny_backbones("bert"), micro_batch_size=2)
    pad = bb.tokenizer.pad_token_id  # type: ignore[attr-defined]
    ids, mask = pad_token_lists([[2, 30, 3], [2, 31, 32, 3], [2, 33, 3]], pad)  # 2 micro-batches here
    encoder.train()
    torch.manual_seed(0)  # same dropout masks in both runs (the dummies run after the real calls)
    expected = encoder(ids, mask).emb.detach()
    calls: list[int] = []
    encoder.backbone.register_forward_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(encoder_module, "_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, op=None: t.fill_(5))  # busiest rank: 5
    torch.manual_seed(0)
    out = encoder(ids, mask)
    assert len(calls) == 5
    out.emb.sum().backward()  # the dummies are part of the graph, with zero weight
    torch.testing.assert_close(out.emb.detach(), expected)


def test_empty_input_keeps_the_feature_width(tiny_backbones):
    encoder, _ = _encoder(tiny_backbones("bert"))
    encoder.hidden_size = 32
    assert encoder.encode_token_lists([], batch_size=4).shape == (0, 32)
