"""How the backbone is tuned: LoRA / DoRA / QLoRA adapters via peft, full fine-tuning, or frozen.

LoRA targets every attention and MLP projection by default (tuning only q/v, peft's default, adapts
noticeably less on recommendation text). The table below names them per architecture; other
architectures fall back to every ``nn.Linear`` inside attention/MLP blocks, with a warning, and
``model.adapter.target_modules`` overrides both.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from torch import nn

from seqrec.config import AdapterConfig, ConfigError

log = logging.getLogger(__name__)

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Suffixes of the encoder layers' projections: a bare "dense" would also match BERT's pooler, which
# seqrec drops (peft then warns about missing pooler keys when the adapter loads on a plain BertModel).
_BERT_LIKE = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]

TARGET_MODULES: dict[str, list[str]] = {
    **{
        t: _LLAMA_LIKE
        for t in (
            "llama",
            "qwen2",
            "qwen3",
            "mistral",
            "mixtral",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo2",
            "granite",
        )
    },
    **{t: _BERT_LIKE for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert")},
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}

# Qualified-name fragments of attention and MLP blocks, for the fallback.
_BLOCK_PATTERN = re.compile(r"attn|attention|mlp|ffn|feed_forward|intermediate|output")


def default_target_modules(model: nn.Module, model_type: str) -> list[str]:
    """Leaf names of the Linear layers to adapt for this architecture."""
    if model_type in TARGET_MODULES:
        return TARGET_MODULES[model_type]
    names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and _BLOCK_PATTERN.search(name)
        }
    )
    if not names:
        raise ConfigError(
            f"no Linear layers found in attention/MLP blocks of a {model_type!r} backbone; "
            "set model.adapter.target_modules"
        )
    log.warning(
        "no LoRA target table for model_type %r; adapting every Linear in attention/MLP blocks: %s "
        "(set model.adapter.target_modules to choose)",
        model_type,
        names,
    )
    return names


def apply_adapters(
    model: nn.Module,
    cfg: AdapterConfig,
    model_type: str,
    base_name: str,
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """Wrap or (un)freeze the backbone per `cfg.method`; returns the module to run."""
    if cfg.method == "frozen":
        model.requires_grad_(False)
        return model
    if cfg.method == "full":
        model.requires_grad_(True)
        return model

    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    targets = cfg.target_modules or default_target_modules(model, model_type)
    lora = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(targets),
        use_dora=cfg.method == "dora",
        bias="none",
    )
    # peft records the model's name_or_path as the adapter's base; for an alias or a dequantized
    # GGUF that is a local cache folder, so point it at the real base model first.
    hf_model: Any = model
    hf_model.name_or_path = base_name
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"model.adapter.target_modules={list(targets)}: {e}") from e
    if gradient_checkpointing:
        # Checkpointed blocks only backpropagate into inputs that require grad; with a frozen
        # embedding layer nothing would, so the adapters would get no gradient.
        peft_model.enable_input_require_grads()
    return peft_model


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
