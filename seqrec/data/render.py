"""Render windows of events and items as the text the language model reads.

One window renders as one line per event, oldest first::

    2014-03-05 bought: Great Lash Mascara | category: Makeup > Eyes | brand: Maybelline
    2014-03-08 (3 days later) viewed: Volume Express Lash | category: Makeup > Eyes

and in Chinese::

    2017-11-25 14:02 浏览了：连衣裙 | 类目：女装 | 品牌：某品牌

Each item field is cut to a token budget first (words for space-separated scripts; each CJK
character counts as one token), so one long description cannot crowd out the rest of a window.
Item texts are rendered once per catalogue and reused. Non-ASCII text passes through untouched.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from seqrec.config import ConfigError, TextConfig

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_HAS_CJK = re.compile(rf"[{_CJK}]")

VERBS = {
    "en": {
        "view": "viewed",
        "pv": "viewed",
        "click": "clicked",
        "cart": "added to cart",
        "buy": "bought",
        "purchase": "bought",
        "fav": "saved",
        "favorite": "saved",
        "rate": "rated",
        "review": "reviewed",
        "interact": "interacted with",
    },
    "zh": {
        "view": "浏览了",
        "pv": "浏览了",
        "click": "点击了",
        "cart": "加购了",
        "buy": "购买了",
        "purchase": "购买了",
        "fav": "收藏了",
        "favorite": "收藏了",
        "rate": "评分了",
        "review": "评价了",
        "interact": "互动了",
    },
}
FIELD_LABELS = {
    "en": {},
    "zh": {
        "category": "类目",
        "brand": "品牌",
        "price": "价格",
        "description": "描述",
        "genres": "类型",
        "year": "年份",
    },
}
SEP = {"en": (": ", " | "), "zh": ("：", " | ")}


_LINE_BREAKS = r"\s*[\r\n\v\f\x85\u2028\u2029]+\s*"


def truncate_tokens(text: str, budget: int) -> str:
    """Keep the first `budget` tokens of `text` (original spacing kept); mark a cut with '…'."""
    if budget <= 0:
        return ""
    for i, m in enumerate(_TOKEN.finditer(text)):
        if i == budget:
            return text[: m.start()].rstrip() + "…"
    return text


def detect_language(texts: list[str]) -> str:
    """'zh' when at least a fifth of a sample of texts contains CJK characters, else 'en'."""
    sample = [t for t in texts[:2000] if t]
    if not sample:
        return "en"
    cjk = sum(1 for t in sample if _HAS_CJK.search(t))
    return "zh" if cjk * 5 >= len(sample) else "en"


def format_gap(seconds: float, language: str) -> str:
    """A human time gap: '3 days later' / '3天后'."""
    s = max(0.0, float(seconds))
    units = [
        (86400 * 30, "month", "个月"),
        (86400, "day", "天"),
        (3600, "hour", "小时"),
        (60, "minute", "分钟"),
    ]
    for size, en, zh in units:
        if s >= size:
            n = math.floor(s / size)
            return f"{n}{zh}后" if language == "zh" else f"{n} {en}{'s' if n > 1 else ''} later"
    return "同时" if language == "zh" else "moments later"


def format_time(ts: int) -> str:
    dt = datetime.fromtimestamp(int(ts), tz=timezone.utc)
    return dt.strftime("%Y-%m-%d") if dt.hour == dt.minute == 0 else dt.strftime("%Y-%m-%d %H:%M")


class Renderer:
    """Turns item rows and windows of events into text, per a TextConfig."""

    def __init__(self, items: pd.DataFrame, behaviors: list[str], cfg: TextConfig, data_language: str = "en"):
        self.cfg = cfg
        self.behaviors = behaviors
        fields = cfg.item_fields or [c for c in items.columns if c not in ("item_idx", "item_id")]
        missing = [f for f in fields if f not in items.columns]
        if missing:
            raise ConfigError(f"text.item_fields {missing} not in the item table (has {list(items.columns)})")
        self.fields = fields
        lang = cfg.language if cfg.language != "auto" else data_language
        self.language = lang if lang in VERBS else "en"
        self.item_texts: list[str] = self._render_items(items)

    def _render_items(self, items: pd.DataFrame) -> list[str]:
        colon, bar = SEP[self.language]
        labels = FIELD_LABELS[self.language]
        columns = []
        for i, f in enumerate(self.fields):
            budget = self.cfg.field_budgets.get(f, self.cfg.default_budget)
            # A line break inside a (quoted) field would break "one line per event": fold it to a space.
            values = (
                items[f]
                .astype("string")
                .fillna("")
                .str.replace(_LINE_BREAKS, " ", regex=True)
                .str.strip()
                .tolist()
            )
            label = "" if i == 0 else labels.get(f, f) + colon
            columns.append([label + truncate_tokens(v, budget) if v else "" for v in values])
        texts = []
        for row_i in range(len(items)):
            parts = [col[row_i] for col in columns if col[row_i]]
            texts.append(bar.join(parts) if parts else f"item {items['item_id'].iloc[row_i]}")
        return texts

    def verb(self, behavior: int) -> str:
        name = self.behaviors[behavior] if 0 <= behavior < len(self.behaviors) else "interact"
        return VERBS[self.language].get(name, name)

    def render_item(self, item_idx: int) -> str:
        return self.item_texts[item_idx]

    def render_window(
        self, items: np.ndarray, times: np.ndarray, behaviors: np.ndarray, prev_time: int | None = None
    ) -> str:
        """One line per event. `prev_time` is the time of the event just before the window (for gaps)."""
        colon = SEP[self.language][0]
        lines = []
        last = prev_time
        for item, ts, beh in zip(items.tolist(), times.tolist(), behaviors.tolist()):
            stamp = []
            if self.cfg.time in ("date", "both"):
                stamp.append(format_time(ts))
            if self.cfg.time in ("gap", "both") and last is not None:
                # Day-resolution logs (e.g. Amazon reviews) cannot say "moments later".
                same_day = ts == last and ts % 86400 == 0
                gap = (
                    ("当天" if self.language == "zh" else "same day")
                    if same_day
                    else format_gap(ts - last, self.language)
                )
                stamp.append(f"（{gap}）" if self.language == "zh" else f"({gap})")
            head = " ".join(stamp)
            text = self.item_texts[item]
            if self.cfg.show_behavior:
                text = f"{self.verb(beh)}{colon}{text}"
            lines.append(f"{head} {text}" if head else text)
            last = ts
        return "\n".join(lines)
