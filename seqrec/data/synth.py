"""A synthetic e-commerce log that a TEXT model can learn from (``seqrec data synth``).

The generator writes raw files in the generic layout (``raw/events.csv``, ``raw/items.csv``,
``raw/users.csv``) and then runs the normal ``prepare`` on them, so its output is an ordinary
prepared directory and the same reader, checks and report are exercised.

Where the signal is (so that words in a window predict the next item):

* Catalogue: every item has a category, a style word (from its category's list), a colour, a
  brand (from its category's brands), a product noun and a price band; its title is built from
  those words (``Lumina hydrating rose serum`` / ``花语保湿玫瑰色精华液``).
* Users have latent interests: a category preference shifted by gender and age, a style half
  preferred by age (younger users lean to the first half of each style list), and a price band
  set by city tier. So profile features carry signal too (profile fusion helps).
* Sequences come in sessions (seconds to minutes apart; sessions hours to days apart). A session
  starts at a category drawn from the user's interests; each next item is, with probability
  ``p_related``, one sharing the previous item's category AND style word (shared title words),
  else one of the same category, else a jump to a new interest. Within a category, items are drawn
  by popularity (Zipf) times the user's style and price fit.
* Funnel: each item a user meets reaches a depth view < click < cart < buy; deeper is likelier
  when the item fits the user's price band and style. ``funnel="collapsed"`` (default) writes one
  event per (user, item) with the deepest behaviour reached, so no evaluation target repeats an
  item of its input; ``funnel="events"`` writes every stage as its own event seconds apart.

A user meets an item at most once (repeats are removed before the funnel), so the log is a clean
next-new-item task. Everything is drawn from one ``numpy`` generator: a seed gives the same files.
Generation is vectorized over users (a loop over steps, not users): 100k users take seconds.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from seqrec.config import DataConfig, validate
from seqrec.data.guard import check_replaceable
from seqrec.data.schema import atomic_directory

log = logging.getLogger(__name__)

BEHAVIORS = ["view", "click", "cart", "buy"]
START = 1_704_067_200  # 2024-01-01 00:00:00 UTC

# category -> (nouns, styles, brands), English and Chinese in parallel.
CATALOG_EN: list[tuple[str, list[str], list[str], list[str]]] = [
    ("skin care", ["serum", "moisturizer", "cleanser", "toner"], ["hydrating", "brightening", "soothing", "firming", "clarifying", "nourishing"], ["Lumina", "Dewlab", "Purely", "Aqualis"]),
    ("makeup", ["lipstick", "foundation", "mascara", "eyeshadow palette"], ["matte", "glossy", "waterproof", "velvet", "shimmer", "natural"], ["Glamora", "Tintique", "Muse", "Velour"]),
    ("fragrance", ["eau de parfum", "body mist", "cologne", "scented oil"], ["floral", "woody", "citrus", "musky", "fresh", "oriental"], ["Aurelle", "Noir Bay", "Sillage", "Petale"]),
    ("hair care", ["shampoo", "conditioner", "hair mask", "styling cream"], ["repairing", "volumizing", "curl defining", "anti frizz", "smoothing", "color safe"], ["Tressa", "Mane Lab", "Silkroot", "Halo"]),
    ("shoes", ["sneakers", "boots", "loafers", "sandals"], ["running", "leather", "suede", "canvas", "platform", "minimalist"], ["Stride", "Cobbler & Co", "Nimbus", "Terrace"]),
    ("bags", ["tote", "backpack", "crossbody bag", "clutch"], ["quilted", "woven", "structured", "slouchy", "vintage", "sporty"], ["Carryall", "Satchel & Sons", "Voyage", "Pocketry"]),
    ("dresses", ["midi dress", "maxi dress", "shirt dress", "wrap dress"], ["linen", "silk", "pleated", "floral print", "knit", "denim"], ["Willow", "Maison Rue", "Breeze", "Atelier 9"]),
    ("watches", ["chronograph", "smartwatch", "dress watch", "diver watch"], ["stainless", "titanium", "rose gold", "ceramic", "skeleton", "solar"], ["Tempo", "Meridian", "Axis", "Horologe"]),
]  # fmt: skip
CATALOG_ZH: list[tuple[str, list[str], list[str], list[str]]] = [
    ("护肤", ["精华液", "面霜", "洁面乳", "爽肤水"], ["保湿", "美白", "舒缓", "紧致", "控油", "滋养"], ["花语", "露肌", "纯萃", "水漾"]),
    ("彩妆", ["口红", "粉底液", "睫毛膏", "眼影盘"], ["哑光", "水光", "防水", "丝绒", "珠光", "裸妆"], ["魅颜", "彩朵", "缪斯", "绒雾"]),
    ("香水", ["淡香精", "香体喷雾", "古龙水", "香氛精油"], ["花香", "木质", "柑橘", "麝香", "清新", "东方"], ["金羽", "夜湾", "余香", "花瓣"]),
    ("洗护", ["洗发水", "护发素", "发膜", "造型霜"], ["修护", "蓬松", "卷发", "防毛躁", "柔顺", "护色"], ["秀发", "发研", "丝根", "光环"]),
    ("鞋靴", ["运动鞋", "靴子", "乐福鞋", "凉鞋"], ["跑步", "真皮", "麂皮", "帆布", "厚底", "极简"], ["步履", "匠心", "云步", "露台"]),
    ("箱包", ["托特包", "双肩包", "斜挎包", "手拿包"], ["菱格", "编织", "硬挺", "慵懒", "复古", "运动"], ["随行", "书包坊", "远行", "口袋"]),
    ("女装", ["中长裙", "长裙", "衬衫裙", "裹身裙"], ["亚麻", "真丝", "百褶", "碎花", "针织", "牛仔"], ["柳岸", "瑞家", "微风", "九号"]),
    ("手表", ["计时表", "智能手表", "正装表", "潜水表"], ["精钢", "钛合金", "玫瑰金", "陶瓷", "镂空", "光能"], ["节拍", "子午", "轴心", "时匠"]),
]  # fmt: skip
COLORS = {
    "en": ["black", "white", "rose", "navy", "olive", "ivory", "crimson", "sky blue"],
    "zh": ["黑色", "白色", "玫瑰色", "藏青色", "橄榄绿", "象牙白", "深红色", "天蓝色"],
}
PRICE_BANDS = {"en": ["budget", "mid-range", "premium"], "zh": ["平价", "中端", "高端"]}
GENDERS = {"en": ["female", "male"], "zh": ["女", "男"]}
CITY_TIERS = {"en": ["tier 1 city", "tier 2 city", "tier 3 city"], "zh": ["一线城市", "二线城市", "三线城市"]}
# Gender shifts category interest: female / male multipliers per category (same order as above).
GENDER_AFFINITY = np.array(
    [[3.0, 3.0, 2.0, 1.5, 1.0, 1.5, 3.0, 0.7], [0.8, 0.4, 1.0, 1.2, 3.0, 1.5, 0.2, 3.0]]
)


@dataclass
class SynthConfig:
    n_users: int = 500
    n_items: int = 300
    seed: int = 0
    language: str = "en"
    mean_events: float = 20.0  # item visits per user before repeats are removed
    p_related: float = 0.6  # next item shares the previous item's category and style
    p_same_category: float = 0.3  # else: same category, drawn by popularity and fit
    p_new_session: float = 0.2
    funnel: str = "collapsed"  # or "events"


def make_catalog(cfg: SynthConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Items with attributes (internal columns start with '_') and their text fields."""
    catalog = CATALOG_ZH if cfg.language == "zh" else CATALOG_EN
    n_cat = len(catalog)
    cat = np.arange(cfg.n_items) % n_cat  # balanced categories
    rng.shuffle(cat)
    style = rng.integers(0, 6, cfg.n_items)
    noun = rng.integers(0, 4, cfg.n_items)
    brand = rng.integers(0, 4, cfg.n_items)
    color = rng.integers(0, len(COLORS["en"]), cfg.n_items)
    band = rng.choice(3, cfg.n_items, p=[0.4, 0.4, 0.2])
    base_price = np.array([15.0, 45.0, 140.0])[band] * rng.uniform(0.7, 1.4, cfg.n_items)
    colors = COLORS[cfg.language]
    titles, prices = [], []
    for i in range(cfg.n_items):
        _, nouns, styles, brands = catalog[cat[i]]
        if cfg.language == "zh":
            titles.append(f"{brands[brand[i]]}{styles[style[i]]}{colors[color[i]]}{nouns[noun[i]]}")
            prices.append(f"¥{base_price[i] * 7:.0f}")
        else:
            titles.append(f"{brands[brand[i]]} {styles[style[i]]} {colors[color[i]]} {nouns[noun[i]]}")
            prices.append(f"${base_price[i]:.2f}")
    width = len(str(cfg.n_items))
    return pd.DataFrame(
        {
            "item_id": [f"i{i:0{width}d}" for i in range(cfg.n_items)],
            "title": titles,
            "category": [catalog[c][0] for c in cat],
            "brand": [catalog[c][3][b] for c, b in zip(cat, brand)],
            "price": prices,
            "_cat": cat,
            "_style": style,
            "_band": band,
            "_pop": 1.0 / (rng.permutation(cfg.n_items) + 1.0) ** 0.8,  # Zipf popularity
        }
    )


def make_users(cfg: SynthConfig, rng: np.random.Generator, n_cat: int) -> pd.DataFrame:
    gender = rng.integers(0, 2, cfg.n_users)
    age = np.clip(rng.normal(34, 11, cfg.n_users), 16, 70).astype(int)
    tier = rng.choice(3, cfg.n_users, p=[0.3, 0.4, 0.3])
    young = (age < 35).astype(int)
    # Category interests: a sparse random taste times gender affinity, older users lean to the
    # second half of the categories' list order a little (hair care, shoes, bags... vs makeup).
    taste = rng.dirichlet(np.full(n_cat, 0.4), cfg.n_users) * GENDER_AFFINITY[gender]
    taste *= np.where(young[:, None] == 1, 1.0, np.linspace(0.7, 1.3, n_cat)[None, :])
    taste /= taste.sum(1, keepdims=True)
    genders, tiers = GENDERS[cfg.language], CITY_TIERS[cfg.language]
    width = len(str(cfg.n_users))
    return pd.DataFrame(
        {
            "user_id": [f"u{u:0{width}d}" for u in range(cfg.n_users)],
            "gender": [genders[g] for g in gender],
            "age": age,
            "city_tier": [tiers[t] for t in tier],
            "_young": young,
            "_band": 2 - tier,  # tier 1 -> premium, tier 3 -> budget
            "_taste": list(taste),
        }
    )


def _fit_weights(items: pd.DataFrame, young: int, band: int) -> np.ndarray:
    """[n_items] how much a (young?, price band) user likes each item: popularity x style x price."""
    style_fit = np.where((items["_style"].to_numpy() < 3) == bool(young), 2.0, 1.0)
    price_fit = np.where(items["_band"].to_numpy() == band, 2.5, 1.0)
    return items["_pop"].to_numpy() * style_fit * price_fit


def _related_sampler(
    cat_of: np.ndarray, style_of: np.ndarray, n_cat: int
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """draw(prev, r): per user, a uniform other item with prev's category and style (shared title
    words), or of its category when no other item shares the style. r: uniforms in [0, 1)."""
    group = cat_of * 6 + style_of
    size, cat_size = np.bincount(group, minlength=n_cat * 6), np.bincount(cat_of, minlength=n_cat)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    cat_start = len(group) + np.concatenate([[0], np.cumsum(cat_size)[:-1]])
    # Items sorted by (category, style), then by category: every group is a contiguous slice.
    slices = np.concatenate([np.argsort(group, kind="stable"), np.argsort(cat_of, kind="stable")])

    def draw(prev: np.ndarray, r: np.ndarray) -> np.ndarray:
        g, c = group[prev], cat_of[prev]
        solo = size[g] < 2
        lo, n = np.where(solo, cat_start[c], start[g]), np.where(solo, cat_size[c], size[g])
        chosen = slices[lo + np.minimum((r * (n - 1)).astype(np.int64), n - 2)]  # one of the first n-1
        return np.where(chosen == prev, slices[lo + n - 1], chosen)  # drew prev itself: take the last

    return draw


def _interest_sampler(items: pd.DataFrame, n_cat: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """draw(key, r): an item of category key // 6 by popularity x fit for (young, band) = key % 6.

    One table for all 6 * n_cat groups: group g's cumulative weights are shifted by g, so a single
    searchsorted of g + r (r in [0, 1)) lands inside group g.
    """
    cat_of = items["_cat"].to_numpy()
    pools, cums = [], []
    for g in range(n_cat * 6):
        in_cat = np.flatnonzero(cat_of == g // 6)
        cw = np.cumsum(_fit_weights(items, (g % 6) // 3, g % 3)[in_cat])
        pools.append(in_cat)
        cums.append(g + cw / cw[-1])
    pool, cum = np.concatenate(pools), np.concatenate(cums)

    def draw(key: np.ndarray, r: np.ndarray) -> np.ndarray:
        return pool[np.minimum(np.searchsorted(cum, key + r, side="right"), len(pool) - 1)]

    return draw


def _sample_visits(
    cfg: SynthConfig,
    items: pd.DataFrame,
    users: pd.DataFrame,
    rng: np.random.Generator,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """[U, T] item visited at each step (-1 beyond the user's length) and [U, T] session starts.

    Vectorized over users: one loop step draws every user's next visit at once.
    """
    n_users, n_cat = len(users), int(items["_cat"].max()) + 1
    sigma = 0.6
    length = np.exp(rng.normal(np.log(cfg.mean_events) - sigma**2 / 2, sigma, n_users))
    length = np.clip(np.round(length), 3, 6 * cfg.mean_events).astype(int)
    steps = int(length.max())
    cat_of = items["_cat"].to_numpy()
    related = _related_sampler(cat_of, items["_style"].to_numpy(), n_cat)
    by_interest = _interest_sampler(items, n_cat)
    profile_key = users["_young"].to_numpy() * 3 + users["_band"].to_numpy()
    taste_cum = np.cumsum(np.stack(list(users["_taste"])), axis=1)
    visits = np.full((n_users, steps), -1, dtype=np.int64)
    starts = np.zeros((n_users, steps), dtype=bool)
    prev = np.zeros(n_users, dtype=np.int64)
    show = progress and sys.stderr.isatty()
    for t in tqdm(range(steps), desc="synth", unit="step", disable=not show, leave=False):
        active = length > t
        u = rng.random(n_users)
        new_session = (rng.random(n_users) < cfg.p_new_session) | (t == 0)
        jump = new_session | (u >= cfg.p_related + cfg.p_same_category)  # a new interest
        draw = jump | (u >= cfg.p_related)  # not a related item: drawn by category and fit
        nxt = related(prev, rng.random(n_users))
        cat = np.where(jump, (taste_cum < rng.random(n_users)[:, None]).sum(1), cat_of[prev])
        key = np.minimum(cat, n_cat - 1) * 6 + profile_key
        r = rng.random(n_users)
        nxt[draw] = by_interest(key[draw], r[draw])
        visits[active, t] = nxt[active]
        starts[active, t] = new_session[active]
        prev = np.where(active, nxt, prev)
    return visits, starts


def generate(cfg: SynthConfig, progress: bool = False) -> dict[str, pd.DataFrame]:
    """Raw tables: events (user_id, item_id, timestamp, behavior), items, users."""
    if cfg.language not in ("en", "zh"):
        raise ValueError(f"language must be en or zh, got {cfg.language!r}")
    if cfg.n_users < 1 or cfg.n_items < 16:
        raise ValueError("synth needs at least 1 user and 16 items")
    rng = np.random.default_rng(cfg.seed)
    items = make_catalog(cfg, rng)
    users = make_users(cfg, rng, int(items["_cat"].max()) + 1)
    visits, starts = _sample_visits(cfg, items, users, rng, progress)
    n_users, steps = visits.shape
    user = np.repeat(np.arange(n_users), steps)
    item, start = visits.ravel(), starts.ravel()
    # Times: sessions hours-to-days apart, events inside a session seconds-to-minutes apart.
    gap = np.where(start, 3600 + rng.exponential(2 * 86400, user.size), 20 + rng.exponential(90, user.size))
    gap = gap.reshape(n_users, steps)
    gap[:, 0] = rng.uniform(0, 30 * 86400, n_users)
    times = (START + np.cumsum(gap, axis=1)).astype(np.int64).ravel()
    keep = item >= 0
    frame = pd.DataFrame({"u": user[keep], "i": item[keep], "t": times[keep]})
    frame = frame[~frame.duplicated(["u", "i"], keep="first")]  # a user meets an item once
    # Funnel depth: fit to price band and style makes deeper stages likelier.
    fit = (items["_band"].to_numpy()[frame["i"]] == users["_band"].to_numpy()[frame["u"]]).astype(float)
    fit += (items["_style"].to_numpy()[frame["i"]] < 3) == users["_young"].to_numpy()[frame["u"]].astype(bool)
    p_buy, p_cart, p_click = 0.03 + 0.04 * fit, 0.06 + 0.05 * fit, 0.25
    x = rng.random(len(frame))
    depth = np.where(
        x < p_buy, 3, np.where(x < p_buy + p_cart, 2, np.where(x < p_buy + p_cart + p_click, 1, 0))
    )
    u, i, t = frame["u"].to_numpy(), frame["i"].to_numpy(), frame["t"].to_numpy()
    if cfg.funnel == "events":
        reps = depth + 1
        u, i, t = np.repeat(u, reps), np.repeat(i, reps), np.repeat(t, reps)
        stage = np.arange(len(u)) - np.repeat(np.cumsum(reps) - reps, reps)
        extra = np.where(stage > 0, rng.integers(5, 120, len(u)), 0)
        # Each funnel step takes seconds; shift the user's later events by as much (order kept).
        csum = np.cumsum(extra)
        first = np.r_[0, np.flatnonzero(np.diff(u)) + 1]  # rows are grouped by user, in time order
        t = t + csum - np.repeat((csum - extra)[first], np.diff(np.r_[first, len(u)]))
        depth = stage
    elif cfg.funnel != "collapsed":
        raise ValueError(f"funnel must be collapsed or events, got {cfg.funnel!r}")
    events = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[u],
            "item_id": items["item_id"].to_numpy()[i],
            "timestamp": t,
            "behavior": np.array(BEHAVIORS)[depth],
        }
    )
    # A real log is written in time order, users interleaved.
    events = events.iloc[np.argsort(events["timestamp"].to_numpy(), kind="stable")].reset_index(drop=True)
    public_items = items[[c for c in items.columns if not c.startswith("_")]]
    public_users = users[[c for c in users.columns if not c.startswith("_")]]
    return {"events": events, "items": public_items, "users": public_users}


def write_raw(tables: dict[str, pd.DataFrame], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(folder / f"{name}.csv", index=False)


def synth_data_config(raw: Path, base: DataConfig | None = None) -> DataConfig:
    """The DataConfig that prepares the raw synthetic files (base: user options, e.g. split)."""
    cfg = base or DataConfig()
    cfg.source.kind = "synthetic"
    cfg.source.input = str(raw)
    cfg.source.numeric_user_fields = ["age"]
    if not cfg.behaviors:
        cfg.behaviors = list(BEHAVIORS)
    validate(cfg)
    return cfg


def synth(
    out: str | Path,
    cfg: SynthConfig | None = None,
    data_cfg: DataConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate raw files under `out`/raw and prepare them into `out` (atomically). Returns the report."""
    from seqrec.data.prepare import prepare_into

    cfg = cfg or SynthConfig()
    if overwrite:  # only ever replace an earlier prepared data set
        check_replaceable(out)
    tables = generate(cfg, progress)
    log.log(logging.INFO if progress else logging.DEBUG, "synth: %d events generated", len(tables["events"]))
    final_raw = str(Path(out) / "raw")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        raw = tmp / "raw"
        write_raw(tables, raw)
        data_cfg = synth_data_config(raw, data_cfg)
        report = prepare_into(data_cfg, tmp, progress)
        # Record the raw folder's final location, not the temporary one.
        for name in ("report.json", "report.md", "meta.json", "data_config.yaml"):
            path = tmp / name
            path.write_text(path.read_text(encoding="utf-8").replace(str(raw), final_raw), encoding="utf-8")
    report["input"] = final_raw
    return report
