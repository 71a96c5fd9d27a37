"""Rendering: exact text snapshots (English and Chinese), token budgets, language detection."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd

from seqrec.config import TextConfig
from seqrec.data.render import Renderer, detect_language, format_gap, truncate_tokens


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


def test_english_window_snapshot() -> None:
    items = pd.DataFrame(
        {
            "item_idx": [0, 1],
            "item_id": ["A1", "B2"],
            "title": ["Great Lash Mascara, Very Black", "Volume Express Lash Sensational"],
            "category": ["Makeup > Eyes", "Makeup > Eyes"],
            "brand": ["Maybelline", None],
        }
    )
    r = Renderer(items, ["view", "cart", "buy"], TextConfig(), "en")
    text = r.render_window(
        np.array([0, 1]), np.array([ts("2014-03-05"), ts("2014-03-08T14:30")]), np.array([2, 0])
    )
    assert text == (
        "2014-03-05 bought: Great Lash Mascara, Very Black | category: Makeup > Eyes | brand: Maybelline\n"
        "2014-03-08 14:30 (3 days later) viewed: Volume Express Lash Sensational | category: Makeup > Eyes"
    )
    # The previous event's time gives the first line its gap.
    first = r.render_window(
        np.array([0]), np.array([ts("2014-03-05")]), np.array([2]), prev_time=ts("2014-03-01")
    )
    assert first.startswith("2014-03-05 (4 days later) bought: ")


def test_chinese_window_snapshot() -> None:
    items = pd.DataFrame(
        {
            "item_idx": [0, 1],
            "item_id": ["1", "2"],
            "title": ["雪纺碎花连衣裙", "羊毛针织开衫"],
            "category": ["女装", "女装"],
            "brand": ["某品牌", "另一品牌"],
            "price": ["¥199", "¥259"],
        }
    )
    r = Renderer(items, ["view", "favorite", "cart", "buy"], TextConfig(), "zh")
    times = np.array([ts("2017-11-25T14:02"), ts("2017-11-25T16:05")])
    assert r.render_window(np.array([0, 1]), times, np.array([0, 3])) == (
        "2017-11-25 14:02 浏览了：雪纺碎花连衣裙 | 类目：女装 | 品牌：某品牌 | 价格：¥199\n"
        "2017-11-25 16:05 （2小时后） 购买了：羊毛针织开衫 | 类目：女装 | 品牌：另一品牌 | 价格：¥259"
    )


def test_budgets_fields_and_options() -> None:
    items = pd.DataFrame(
        {
            "item_idx": [0, 1],
            "item_id": ["x", "y"],
            "title": ["one two three four", None],
            "brand": ["B", None],
        }
    )
    cfg = TextConfig(item_fields=["title"], field_budgets={"title": 2}, time="none", show_behavior=False)
    r = Renderer(items, ["view"], cfg, "en")
    assert r.item_texts == ["one two…", "item y"]  # no text at all: the id stands in
    assert r.render_window(np.array([0]), np.array([0]), np.array([0])) == "one two…"


def test_truncate_counts_cjk_characters_as_tokens() -> None:
    assert truncate_tokens("雪纺碎花连衣裙", 3) == "雪纺碎…"
    assert truncate_tokens("Mix 中文 text", 2) == "Mix 中…"
    assert truncate_tokens("short", 5) == "short"


def test_language_detection_and_gaps() -> None:
    assert detect_language(["连衣裙", "Dress", "衬衫"]) == "zh"
    assert detect_language(["Dress", "Shirt"]) == "en"
    assert format_gap(90, "en") == "1 minute later" and format_gap(2 * 86400, "zh") == "2天后"
