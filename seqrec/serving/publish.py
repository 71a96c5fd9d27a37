"""Publish a trained model on the Hugging Face Hub (``seqrec publish``).

The folder that is uploaded (``--dry-run --out DIR`` writes it and stops)::

    adapter_model.safetensors   the peft adapter (LoRA/DoRA), loadable with peft on its base model
    adapter_config.json         its peft config; base_model_name_or_path = the real base model
    head.safetensors            aggregator, profile encoder, fusion, item tower, ranking head
    seqrec_config.json          the resolved RunConfig, with paths local to this machine blanked
    seqrec_model.json           format version, catalogue size, profile spec, behaviours
    backbone/                   full fine-tuning only (config, safetensors weights, tokenizer)
    README.md                   the model card (huggingface_hub ModelCard / ModelCardData)

Only an allow-list of JSON, safetensors and tokenizer files is copied: never data, never pickles,
never the run's logs. The card's metadata names the base model, ``library_name: peft``, tags, the
data set, the license and the evaluation results (from ``<checkpoint>/eval-*/metrics.json``,
written by ``seqrec evaluate``) with their protocol; it is parsed back with huggingface_hub and
the folder is loaded with ``SeqRecModel.from_pretrained`` before anything is uploaded.

The token comes from huggingface_hub's usual lookup (``HF_TOKEN``, then ``hf auth login``) or from
the environment variable named by ``--token-env``. It is passed to ``HfApi`` and never printed:
log records and error messages produced during the upload have it replaced by ``***``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqrec.config import ConfigError, RunConfig, from_dict, save_config, to_dict
from seqrec.data.schema import atomic_directory
from seqrec.errors import CheckpointError
from seqrec.manifest import check_finite, check_model_folder, seal_model_folder

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
MODEL_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "head.safetensors",
    "seqrec_model.json",
)
CONFIG_FILE = "seqrec_config.json"
# What a full fine-tune's backbone/ folder may contribute (weights as safetensors, config, tokenizer).
BACKBONE_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.model", "*.jinja")
TAGS = ["seqrec", "recommendation", "sequential-recommendation"]
ADAPTER_TAGS = ["peft", "lora"]
# Config fields that may hold paths of this machine, and what replaces them in the published config.
LOCAL_PATH_FIELDS: dict[str, str | None] = {
    "data_dir": "",
    "data.source.input": "",
    "train.output_dir": "runs/seqrec",
    "train.features_dir": None,
    "train.init_from": None,
    "train.resume": None,
    "train.deepspeed": None,
    "eval.negatives_dir": None,
    "eval.candidates_file": None,
}
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")


class PublishError(RuntimeError):
    """Publishing failed (authentication, network, hub): the message never contains the token."""


@dataclass
class PublishPlan:
    """What will be (or was) published."""

    folder: Path
    repo_id: str
    base_model: str
    files: list[str]
    removed_paths: list[str]  # config fields blanked because they were local paths
    eval_files: list[str]  # metrics.json files quoted in the card
    warnings: list[str] = field(default_factory=list)
    url: str | None = None

    def summary(self) -> str:
        lines = [f"{self.repo_id}: {len(self.files)} files in {self.folder}"]
        lines += [f"  {name}" for name in self.files]
        lines.append(f"base model: {self.base_model}")
        if self.eval_files:
            lines.append(f"evaluation results from: {', '.join(self.eval_files)}")
        if self.removed_paths:
            lines.append(f"local paths removed from the config: {', '.join(self.removed_paths)}")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.url:
            lines.append(f"uploaded: {self.url}")
        return "\n".join(lines)


# ---- the published config --------------------------------------------------------------------


def _is_local_path(value: str) -> bool:
    """Looks like a path of this machine (absolute, home-relative, or existing here)."""
    if not value:
        return False
    path = Path(value).expanduser()
    return path.is_absolute() or value.startswith(("~", "./", "../")) or path.exists()


def is_hub_id(name: str) -> bool:
    """`org/name` that is not a path on this machine."""
    return bool(_REPO_ID.fullmatch(name)) and not Path(name).exists()


def public_config(cfg: RunConfig, base_model: str | None = None) -> tuple[RunConfig, list[str]]:
    """A copy of `cfg` safe to publish: local paths blanked (their dotted names returned),
    remote code off; with `base_model`, the backbone is loaded from that hub id."""
    data = to_dict(cfg)
    removed = []
    for dotted, replacement in LOCAL_PATH_FIELDS.items():
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        value = node.get(leaf)
        # data_dir always goes: the data is never published, so no path to it is meaningful.
        if isinstance(value, str) and value and (dotted == "data_dir" or _is_local_path(value)):
            node[leaf] = replacement
            removed.append(dotted)
    backbone = data["model"]["backbone"]
    backbone["trust_remote_code"] = False
    if base_model:
        backbone["name"], backbone["gguf_file"] = base_model, None
    return from_dict(RunConfig, data), removed


# ---- evaluation results ----------------------------------------------------------------------------


def find_metrics(checkpoint: Path) -> list[Path]:
    """metrics.json files of `seqrec evaluate` in the checkpoint (test first, then valid, then others)."""
    found = sorted(checkpoint.glob("eval-*/metrics.json"))
    order = {"eval-test": 0, "eval-valid": 1}
    return sorted(found, key=lambda p: (order.get(p.parent.name, 2), p.parent.name))


def read_metrics(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable metrics.json ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def metric_values(report: dict[str, Any]) -> dict[str, float]:
    """The overall metrics of a metrics.json (its numeric top-level entries except counts)."""
    return {
        k: float(v)
        for k, v in report.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n_users"
    }


def public_protocol(protocol: dict[str, Any]) -> dict[str, Any]:
    """The protocol description without file paths of this machine."""
    return {k: v for k, v in protocol.items() if not k.endswith("_file") and not k.endswith("_dir")}


def eval_results(reports: Sequence[dict[str, Any]], dataset: str) -> list[Any]:
    """huggingface_hub EvalResult rows (one per metric and split), the protocol in metric_args."""
    from huggingface_hub import EvalResult

    rows = []
    for report in reports:
        protocol = public_protocol(report.get("protocol") or {})
        label = protocol.get("label") or protocol.get("protocol") or "unknown protocol"
        for name, value in metric_values(report).items():
            rows.append(
                EvalResult(
                    task_type="sequential-recommendation",
                    task_name="Sequential recommendation",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split=str(report.get("split", "test")),
                    metric_type=name,
                    metric_name=name.upper(),
                    metric_value=round(value, 6),
                    metric_config=str(label),
                    metric_args=protocol or None,
                )
            )
    return rows


# ---- the model card ----------------------------------------------------------------------------------


def _results_table(reports: Sequence[dict[str, Any]]) -> str:
    if not reports:
        return (
            "No evaluation results were found beside the checkpoint "
            "(run `seqrec evaluate --checkpoint DIR --split test` before publishing to include them)."
        )
    lines = []
    for report in reports:
        values = metric_values(report)
        p = public_protocol(report.get("protocol") or {})
        lines += [
            f"**{report.get('split', 'test')} split**, {report.get('n_users', '?')} users. Protocol: "
            f"{p.get('label', p.get('protocol', '?'))}; candidates: {p.get('candidates', '?')}; "
            f"masking: {p.get('masking', '?')}; ties: {p.get('tie_rule', '?')}.",
            "",
            "| " + " | ".join(values) + " |",
            "|" + "---:|" * len(values),
            "| " + " | ".join(f"{v:.4f}" for v in values.values()) + " |",
            "",
        ]
    return "\n".join(lines).rstrip()


def card_body(
    repo_id: str, cfg: RunConfig, meta: dict[str, Any], base_model: str, dataset: str, reports: Sequence[dict]
) -> str:
    m, w = cfg.model, cfg.window
    adapter = m.adapter
    method = adapter.method
    names = {"lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA"}
    tuned = (
        f"a {names[method]} adapter (r={adapter.r}, alpha={adapter.alpha}) trained with peft"
        if method in names
        else {"full": "full fine-tuning", "frozen": "the frozen backbone"}.get(method, method)
    )
    is_decoder = bool(meta.get("is_decoder"))
    kind = "decoder" if is_decoder else "encoder"
    pooling = m.encoder.pooling if m.encoder.pooling != "auto" else ("last token" if is_decoder else "mean")
    peft_snippet = ""
    if method in ("lora", "dora", "qlora"):
        peft_snippet = f"""
The window encoder alone (the adapter on its base model) loads with plain peft:

```python
from peft import PeftModel
from transformers import AutoModel

encoder = PeftModel.from_pretrained(AutoModel.from_pretrained("{base_model}"), "{repo_id}")
```
"""
    return f"""
# {repo_id}

A seqrec sequential recommender. A user's behaviour history is cut into
windows of {w.size} events, each window is rendered as text and encoded by **{base_model}** with
{tuned}; a causal Transformer aggregates the window embeddings, the result is fused with the user
profile, and items are scored as `dot(user, item) / temperature` against {m.items.mode} item vectors
({meta.get("n_items", "?")} items).

## How to load

```python
from seqrec.modeling import SeqRecModel

model = SeqRecModel.from_pretrained("{repo_id}")
```

Loading reads only JSON and safetensors files; no code from this repository is run.
{peft_snippet}
## Model

| part | setting |
|---|---|
| backbone | `{base_model}` ({kind}, pooling {pooling}, norm {m.encoder.norm}) |
| adapter | {method} (r={adapter.r}, alpha={adapter.alpha}) |
| windows | {w.mode}, size {w.size}, stride {w.stride or w.size}, align {w.align}, at most {w.max_windows} |
| text | time: {cfg.text.time}, behaviours shown: {cfg.text.show_behavior}, {cfg.text.max_window_tokens} tokens per window |
| aggregator | d_model {m.aggregator.d_model}, {m.aggregator.layers} layers, {m.aggregator.heads} heads |
| user/item vectors | dim {m.head.dim}, L2-normalized, temperature {m.head.temperature} |
| item tower | {m.items.mode} |
| behaviours | {", ".join(meta.get("behaviors", []))} |

## Training data

`{dataset}` (the data itself is not part of this repository; item vectors need the same catalogue,
prepared with `seqrec data prepare`).

## Evaluation

{_results_table(reports)}
"""


def make_card(
    repo_id: str,
    cfg: RunConfig,
    meta: dict[str, Any],
    base_model: str,
    dataset: str,
    reports: Sequence[dict[str, Any]],
    license: str,
    datasets: Sequence[str] = (),
) -> Any:
    from huggingface_hub import ModelCard, ModelCardData

    adapter = cfg.model.adapter.method in ("lora", "dora", "qlora")
    results = eval_results(reports, dataset)
    data = ModelCardData(
        base_model=base_model if is_hub_id(base_model) else None,
        library_name="peft" if adapter else None,
        license=license,
        tags=TAGS + (ADAPTER_TAGS if adapter else []),
        datasets=list(datasets) or None,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )
    return ModelCard(
        f"---\n{data.to_yaml()}\n---\n{card_body(repo_id, cfg, meta, base_model, dataset, reports)}"
    )


def check_card(path: Path, expected: dict[str, Any]) -> Any:
    """Parse the card back with huggingface_hub; its metadata must hold `expected` and survive a
    metadata round trip unchanged. Returns the parsed ModelCard."""
    from huggingface_hub import ModelCard, metadata_load

    try:
        card = ModelCard.load(path)
    except ValueError as e:
        raise ConfigError(f"{path}: the model card does not parse ({e})") from e
    parsed = card.data.to_dict()
    for key, value in expected.items():
        if value is not None and parsed.get(key) != value:
            raise ConfigError(f"{path}: card metadata {key} is {parsed.get(key)!r}, expected {value!r}")
    raw = metadata_load(path)
    if raw != parsed:
        raise ConfigError(f"{path}: card metadata does not round-trip through huggingface_hub")
    return card


# ---- preparing the folder ---------------------------------------------------------------------------


def read_checkpoint(checkpoint: Path) -> tuple[dict[str, Any], RunConfig]:
    """(seqrec_model.json, the saved RunConfig) of a local model folder; CheckpointError naming the file."""
    from seqrec.config import load_config
    from seqrec.modeling.io import baseline_kind

    if not checkpoint.is_dir():
        raise CheckpointError(f"model folder not found: {checkpoint}")
    kind = baseline_kind(checkpoint)
    if kind:
        raise CheckpointError(f"{checkpoint} holds a {kind} model, not a seqrec model")
    meta_path, cfg_path = checkpoint / "seqrec_model.json", checkpoint / CONFIG_FILE
    for path in (meta_path, cfg_path):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: {checkpoint} is not a complete seqrec model folder")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} must hold a JSON object")
    try:
        cfg: RunConfig = load_config(cfg_path)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e
    return meta, cfg


def check_weight_files(checkpoint: Path, meta: dict[str, Any]) -> None:
    """Every weight file the model's metadata lists is a readable safetensors file (CheckpointError
    naming it, or the pickle file found in its place, otherwise). Nothing is unpickled."""
    from seqrec.modeling.io import read_safetensors

    files = meta.get("files") or {}
    for key in ("head", "adapter"):
        if files.get(key):
            check_finite(read_safetensors(checkpoint / str(files[key])), checkpoint / str(files[key]))


def _copy_model_files(checkpoint: Path, dst: Path, meta: dict[str, Any]) -> None:
    for name in MODEL_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, dst / name)
    backbone = (meta.get("files") or {}).get("backbone")
    if backbone:
        (dst / backbone).mkdir()
        for pattern in BACKBONE_PATTERNS:
            for src in (checkpoint / backbone).glob(pattern):
                shutil.copy2(src, dst / backbone / src.name)


def dataset_name(cfg: RunConfig) -> str:
    """A label for the training data when no --dataset is given: its source kind, never a folder
    name of this machine (a card lists a data set only when --dataset names one)."""
    return f"{cfg.data.source.kind} data (local)"


def prepare_folder(
    checkpoint: str | Path,
    out: str | Path,
    repo_id: str,
    *,
    license: str = "apache-2.0",
    base_model: str | None = None,
    dataset: str | None = None,
    metrics: Sequence[str | Path] | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> PublishPlan:
    """Write the folder to publish into `out` (atomically) and check it: the card parses with
    huggingface_hub and, with `verify`, the folder loads with SeqRecModel.from_pretrained."""
    from seqrec.modeling import SeqRecModel
    from seqrec.modeling.io import baseline_kind

    checkpoint, out = Path(checkpoint), Path(out)
    if not _REPO_ID.fullmatch(repo_id):
        raise ConfigError(f"--repo-id {repo_id!r} must look like ORG/NAME")
    if not _LICENSE.fullmatch(license):
        raise ConfigError(f"--license {license!r} must be a hub license id such as apache-2.0 or mit")
    kind = baseline_kind(checkpoint) if checkpoint.is_dir() else ""
    if kind:
        return prepare_baseline_folder(
            checkpoint,
            out,
            repo_id,
            kind,
            license=license,
            dataset=dataset,
            metrics=metrics,
            overwrite=overwrite,
        )
    meta, cfg = read_checkpoint(checkpoint)
    check_weight_files(checkpoint, meta)
    check_model_folder(checkpoint)  # sizes and sha256 against the manifest written at save
    real_base = str(meta.get("base_model") or cfg.model.backbone.name)
    base = base_model or real_base
    warnings = []
    if base_model and not is_hub_id(base_model):
        raise ConfigError(f"--base-model {base_model!r} must be a hub id (ORG/NAME)")
    if not is_hub_id(base):
        warnings.append(
            f"the base model {base!r} is not a hub id, so others cannot load it; pass --base-model ORG/NAME "
            "(the card's base_model field is left out)"
        )
    published_cfg, removed = public_config(cfg, base_model)
    reports_paths = [Path(p) for p in metrics] if metrics else find_metrics(checkpoint)
    reports = [read_metrics(p) for p in reports_paths]
    name = dataset or dataset_name(cfg)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    with atomic_directory(out, overwrite=True) as tmp:
        _copy_model_files(checkpoint, tmp, meta)
        save_config(published_cfg, tmp / CONFIG_FILE)
        if (tmp / "adapter_config.json").is_file():
            adapter_cfg = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
            adapter_cfg["base_model_name_or_path"] = base
            (tmp / "adapter_config.json").write_text(
                json.dumps(adapter_cfg, indent=2) + "\n", encoding="utf-8"
            )
        listed = [dataset] if dataset else []  # only a data set the user named, never a local folder
        card = make_card(repo_id, published_cfg, meta, base, name, reports, license, listed)
        card.save(tmp / CARD_FILE)
        seal_model_folder(tmp)  # a fresh manifest: the config and adapter config were rewritten
        check_card(
            tmp / CARD_FILE,
            {
                "base_model": base if is_hub_id(base) else None,
                "library_name": "peft" if (tmp / "adapter_config.json").is_file() else None,
                "license": license,
                "datasets": listed or None,
            },
        )
        if verify:
            # Load what will be published: every weight file is checked by name and shape. With
            # --base-model the published config names a hub backbone, so the original folder
            # (same weight files, local backbone) is loaded instead.
            SeqRecModel.from_pretrained(checkpoint if base_model else tmp)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return PublishPlan(out, repo_id, base, files, removed, [str(p) for p in reports_paths], warnings)


def prepare_baseline_folder(
    checkpoint: Path,
    out: Path,
    repo_id: str,
    kind: str,
    *,
    license: str,
    dataset: str | None,
    metrics: Sequence[str | Path] | None,
    overwrite: bool,
) -> PublishPlan:
    """The folder to publish for a SASRec or popularity model: its weights, the public config, a
    manifest and a model card; checked by loading it back (manifest and finite weights included)."""
    from huggingface_hub import ModelCard, ModelCardData

    from seqrec.baselines.folder import WEIGHTS_FILE, read_run_config
    from seqrec.baselines.popularity import PopularityModel
    from seqrec.baselines.sasrec import SASRec

    loader: Any = SASRec if kind == "sasrec" else PopularityModel
    loader.from_pretrained(checkpoint)  # manifest, finite weights, shapes
    cfg = read_run_config(checkpoint, kind)
    published_cfg, removed = public_config(cfg)
    reports_paths = [Path(p) for p in metrics] if metrics else find_metrics(checkpoint)
    reports = [read_metrics(p) for p in reports_paths]
    name = dataset or dataset_name(cfg)
    listed = [dataset] if dataset else []
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    what = (
        f"SASRec (self-attentive sequential recommendation, full cross-entropy; d_model {cfg.sasrec.d_model}, "
        f"{cfg.sasrec.layers} blocks, the newest {cfg.sasrec.max_len} events)"
        if kind == "sasrec"
        else "most popular items (training counts)"
    )
    body = f"""
# {repo_id}

A {what} baseline trained with seqrec on `{name}`. Item ids are those of the prepared data set;
the data itself is not part of this repository.

## How to load

```python
from seqrec.baselines.{"sasrec import SASRec" if kind == "sasrec" else "popularity import PopularityModel"}
model = {"SASRec" if kind == "sasrec" else "PopularityModel"}.from_pretrained("path/to/this/folder")
```

## Evaluation

{_results_table(reports)}
"""
    with atomic_directory(out, overwrite=True) as tmp:
        shutil.copy2(checkpoint / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        save_config(published_cfg, tmp / CONFIG_FILE)
        data = ModelCardData(
            license=license,
            tags=[*TAGS, kind],
            datasets=listed or None,
            model_name=repo_id.split("/")[-1],
            eval_results=eval_results(reports, name) or None,
        )
        ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").save(tmp / CARD_FILE)
        check_card(tmp / CARD_FILE, {"license": license, "datasets": listed or None})
        seal_model_folder(tmp)
        loader.from_pretrained(tmp)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return PublishPlan(out, repo_id, kind, files, removed, [str(p) for p in reports_paths])


# ---- uploading ---------------------------------------------------------------------------------


def resolve_token(token_env: str | None) -> str:
    """The token: from the environment variable `token_env`, else huggingface_hub's lookup."""
    if token_env:
        token = os.environ.get(token_env, "")
        if not token:
            raise PublishError(f"--token-env {token_env}: that environment variable is not set or empty")
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise PublishError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN (or use --token-env NAME)"
        )
    return found


class _Redact(logging.Filter):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "***"), None
        return True


@contextlib.contextmanager
def redacted_logs(secret: str) -> Iterator[None]:
    """Replace `secret` by *** in every log record while the block runs (all handlers of the root
    logger, where library loggers propagate to)."""
    flt = _Redact(secret)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)


def upload_folder(
    folder: str | Path, repo_id: str, private: bool, token: str, message: str | None = None
) -> str:
    """create_repo(exist_ok=True) then upload_folder; returns the repo URL. Errors are PublishError
    with the token removed from their text."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with redacted_logs(token):
        try:
            repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                repo_type="model",
                commit_message=message or "Upload seqrec model",
            )
        except Exception as e:  # hub, network or auth failure: one clean line, never the token
            text = f"{type(e).__name__}: {e}".replace(token, "***")
            raise PublishError(f"uploading to {repo_id} failed: {text}") from None
    return str(getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}")
