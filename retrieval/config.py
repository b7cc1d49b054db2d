"""The one typed configuration object.

Every weight vector here is normalised to sum to 1 when the object is built, so a
merchandiser can type ``margin=2, sales=1`` and get ``margin=0.667, sales=0.333``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from platformdirs import user_cache_dir
from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _normalise(weights: dict[str, float], name: str) -> dict[str, float]:
    # NaN passes "< 0" and would turn every score into NaN; inf would make the others 0/inf
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise ValueError(f"{name} weights must be finite and non-negative, got {weights}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"{name} weights must not all be zero")
    return {k: v / total for k, v in weights.items()}


class EnvSettings(BaseSettings):
    """Every environment variable the project reads, in one place (``BUNDLE_`` prefix).

    Read afresh by :func:`env_settings` on each call, so a variable set after import (a
    test, a launcher) counts. The process-wide library defaults (offline hub, passive
    OpenMP threads) are written by :func:`apply_process_defaults`, not read here.
    """

    model_config = SettingsConfigDict(env_prefix="BUNDLE_", extra="ignore", populate_by_name=True)

    data_dir: Path | None = None  # the index folder
    chroma_url: str | None = Field(default=None, validation_alias=AliasChoices("BUNDLE_CHROMA_URL", "CHROMA_URL"))
    model_cache: Path | None = None  # converted GGUF models
    hmac_secret: str | None = None  # pseudonymisation key; generated in the data dir when unset
    merch_user: str = ""
    merch_password: str = ""
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("BUNDLE_HOST", "GRADIO_SERVER_NAME"))
    port: int = Field(default=7860, validation_alias=AliasChoices("BUNDLE_PORT", "GRADIO_SERVER_PORT"))

    def index_dir(self) -> Path:
        return self.data_dir or Path(user_cache_dir("bundle-assistant")) / "data"

    def model_cache_dir(self) -> Path:
        return (self.model_cache or Path(user_cache_dir("bundle-assistant")) / "models").expanduser()


def env_settings() -> EnvSettings:
    return EnvSettings()


# Library defaults every entry point wants, unless the environment says otherwise. The
# libraries read them once, when they load, so they are written before the heavy imports:
# ``retrieval/__init__`` applies them, and the entry points (CLI, app) call this first.
PROCESS_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("HF_HUB_OFFLINE", "1"),  # no hub downloads: every model is packaged or local
    ("TOKENIZERS_PARALLELISM", "false"),  # no fork warnings from the tokenizers
    # OpenMP's idle threads spin while they wait for work. Serving, they spun against Chroma's
    # own threads on a 2-core machine and gave single-query embedding stalls of up to ~100 ms
    # (search p95 30-68 ms, max 100-135 ms); passive waiting removed them (max ~40 ms) at no
    # cost to the LLM's tokens/s (17.1 both ways). Read once, when torch loads OpenMP.
    ("OMP_WAIT_POLICY", "PASSIVE"),
    ("GRADIO_ANALYTICS_ENABLED", "False"),
)
# Only for the long-running web server: pyarrow's default allocator (jemalloc) kept growing
# under the web server's thread churn (+85 MiB a minute at 20 sessions in
# bench/bench_load.py); the system one stays flat. Read when pyarrow loads.
SERVER_DEFAULTS: tuple[tuple[str, str], ...] = (("ARROW_DEFAULT_MEMORY_POOL", "system"),)


def apply_process_defaults(*, server: bool = False) -> None:
    """Write :data:`PROCESS_DEFAULTS` (and, for the web server, :data:`SERVER_DEFAULTS`)
    into the environment where it does not set them already."""
    for name, value in PROCESS_DEFAULTS + (SERVER_DEFAULTS if server else ()):
        os.environ.setdefault(name, value)


def default_data_dir() -> Path:
    """Where the index lives unless ``--data-dir`` or ``BUNDLE_DATA_DIR`` says otherwise."""
    return env_settings().index_dir()


class ProfileConfig(BaseModel):
    """The article's user profile ``U = Σ w_i·X_i`` over behaviour types.

    ``event_weights`` say how much one event of each kind counts; they are normalised to
    sum 1. ``half_life_days`` decays older behaviour: an event ``d`` days before the
    user's latest event counts ``0.5 ** (d / half_life_days)``.
    """

    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 0.1, "cart": 0.2, "purchase": 0.5, "review": 0.2}
    )
    half_life_days: float = 90.0
    top_n: int = 5

    @field_validator("event_weights")
    @classmethod
    def _norm(cls, v: dict[str, float]) -> dict[str, float]:
        return _normalise(v, "event")

    @field_validator("half_life_days")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("half_life_days must be > 0")
        return v


class ProductFeatureConfig(BaseModel):
    """The article's product feature ``P = Σ w_j·X_j`` (price, brand, category, rating).

    Used by the affinity part of retrieval: how much a product's match with the profile
    on each feature counts. Normalised to sum 1.
    """

    weights: dict[str, float] = Field(
        default_factory=lambda: {"category": 0.5, "brand": 0.25, "price": 0.15, "rating": 0.10}
    )

    @field_validator("weights")
    @classmethod
    def _norm(cls, v: dict[str, float]) -> dict[str, float]:
        return _normalise(v, "product feature")


OBJECTIVE_COMPONENTS = ("preference", "complementarity", "margin", "sales")


class ObjectiveConfig(BaseModel):
    """The article's objective ``T = w_S·S + w_R·R + w_D·D``, extended.

    ``weights`` cover preference (user satisfaction), complementarity, margin and sales,
    normalised to sum 1. ``redundancy_penalty`` is subtracted per near-duplicate pair
    share (same product type and size) and is not part of the normalised sum; so is
    ``repeat_penalty``, subtracted for products a higher-ranked bundle already shows.
    """

    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "preference": 0.4,
            "complementarity": 0.25,
            "margin": 0.2,
            "sales": 0.15,
        }
    )
    redundancy_penalty: float = 0.2
    # Subtracted per share of a bundle's added products that a higher-ranked bundle of the
    # same list already shows (:func:`assistant.reranker.in_slate_order`): ten bundles that
    # all add the shopper's bananas read as one. Chosen on the cj-completion dev split (500
    # cases, seed 0, type NDCG@10): 0.3121 at 0, 0.3131 at 0.05, 0.3135 at 0.1, 0.3142 at
    # 0.2, 0.3147 at 0.4, 0.3146 at 0.6, 1 and 2; counted by product type instead it lowered
    # the score (0.3098 at 0.2, 0.3060 at 0.4).
    repeat_penalty: float = Field(default=0.4, ge=0)
    # How sharply the item ranker's relevance enters preference and complementarity:
    # sigmoid(raw / T). LambdaRank's raw score has no natural scale (only its order is
    # trained), so T was chosen on the cj-completion dev split (500 cases, seed 0; type
    # NDCG@10 0.3104 at T = 1, 0.3126 at 0.5, 0.3095 at 0.25; eval/README.md).
    relevance_temperature: float = Field(default=0.5, gt=0)

    @field_validator("weights")
    @classmethod
    def _norm(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(OBJECTIVE_COMPONENTS)
        if unknown:
            raise ValueError(
                f"unknown objective component(s) {sorted(unknown)}; "
                f"expected some of {list(OBJECTIVE_COMPONENTS)}"
            )
        full = {k: float(v.get(k, 0.0)) for k in OBJECTIVE_COMPONENTS}
        return _normalise(full, "objective")


# Assumed gross margin rates per Complete Journey department. The data has no costs, so
# these are typical US grocery figures (fresh and prepared food high, tobacco and drug
# low). A merchandiser's CSV (product_id,margin_rate or department,margin_rate) overrides.
DEFAULT_DEPARTMENT_MARGINS: dict[str, float] = {
    "GROCERY": 0.28,
    "DRUG GM": 0.32,
    "PRODUCE": 0.38,
    "MEAT": 0.30,
    "MEAT-PCKGD": 0.29,
    "DELI": 0.42,
    "PASTRY": 0.45,
    "NUTRITION": 0.33,
    "SEAFOOD-PCKGD": 0.30,
    "SEAFOOD": 0.31,
    "FLORAL": 0.48,
    "COSMETICS": 0.40,
    "SPIRITS": 0.25,
    "MISCELLANEOUS": 0.25,
    "KIOSK-GAS": 0.08,
    "FUEL": 0.08,
    "SALAD BAR": 0.45,
    "FROZEN GROCERY": 0.30,
    "CHEF SHOPPE": 0.45,
    "TRAVEL & LEISUR": 0.35,
    "GARDEN CENTER": 0.40,
    "RESTAURANT": 0.50,
    "PHARMACY SUPPLY": 0.20,
    "COUP/STR & MFG": 0.10,
}


class CatalogueConfig(BaseModel):
    default_margin: float = 0.30
    department_margins: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_DEPARTMENT_MARGINS)
    )

    @field_validator("default_margin")
    @classmethod
    def _margin(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("default_margin must be in [0, 1)")
        return v


class PricingConfig(BaseModel):
    """Bundle discounts: the largest discount in ``[min_discount, max_discount]`` (stepping
    by ``step``) that keeps the bundle's margin rate at or above ``margin_floor``."""

    min_discount: float = 0.0
    max_discount: float = 0.15
    step: float = 0.01
    margin_floor: float = 0.15

    @model_validator(mode="after")
    def _check(self) -> PricingConfig:
        if not 0 <= self.min_discount <= self.max_discount < 1:
            raise ValueError("need 0 <= min_discount <= max_discount < 1")
        if not 0 <= self.margin_floor < 1:
            raise ValueError("margin_floor must be in [0, 1)")
        return self


class RetrievalConfig(BaseModel):
    semantic_k: int = 40
    complements_per_item: int = 8
    affinity_k: int = 10
    popular_k: int = 10
    max_candidates: int = 40


class RankerConfig(BaseModel):
    """The learned item ranker (:mod:`retrieval.ranker`) and its candidate pool
    (:mod:`retrieval.pool`).

    Trained at ``index`` time from the index's own data with an internal split:
    baskets of the last ``label_days`` are labels and everything before them is the
    history the features are computed from (Complete Journey and other basket data);
    BundleRec-style data (hand-made bundles) holds ``bundle_folds`` folds of its bundles
    out in turn and asks for each held-out item given the rest. With fewer than
    ``min_queries`` training queries the documented linear fallback ranks instead.
    Hyper-parameters were chosen on the ranker's internal validation queries (a seeded
    ``valid_share`` of them, by user or bundle), or on the eval's dev split (cj-completion
    ``--split dev``, 500 cases of weeks 39-44, the index built from weeks 1-38, type-level
    NDCG@10 of the ranked pool against the type-level buy-again+co-occurrence baseline's
    0.2845), never on eval test cases. Dev figures (ranked pool, 500 dev cases), one change
    at a time from the earlier defaults (0.3071): + the ``blend`` feature 0.3080; +
    ``max_queries`` 9000 (every eligible basket) 0.3092; + ``one_row_per_type`` 0.3106
    (personal co-occurrence features on top lost 0.005 ± 0.002 paired, so they were
    dropped); + ``learning_rate`` 0.05 0.3180 (0.3130 with those features; 63 leaves: no
    change; 0/1 labels instead of graded 0.3100; ``repeat_types_k`` 100: 0.3090 against
    0.3106, kept at 0). Tried and dropped since: how repeatable a SKU, its type and the
    user's products are for everyone (three "repeat rate" features) lowered the ranked
    pool from 0.3180 to 0.3150 and the system from 0.3170 to 0.3109. What similar shoppers
    buy (user-kNN as in TIFU-KNN: the 100 most similar households by cosine of their
    recency-weighted type vectors, their basket share of the SKU and of its type) made no
    difference: ranked pool 0.3181, system 0.3130, against 0.3180 and 0.3126 without. Against a control
    rebuilt the same way (system 0.3121, ranked pool 0.3176: a rebuild moves them by ~0.0005),
    LightGBM's ``rank_xendcg`` objective scored 0.2991 / 0.3049, ``num_leaves`` 15 with
    ``min_data_in_leaf`` 200 0.3071 / 0.3128, and ``label_days`` 56 0.3101 / 0.3136; none
    was adopted (each: the dev split's index rebuilt with the one setting changed,
    ``eval.run.build_eval_index``, then the system and its ranked pool on the 500 cases).
    More training queries did not help either: a second six-week label window before the
    last one (its own history, 9,000 more queries) 0.3039 / 0.3116, and two anchors per
    label basket (two queries each) 0.3078 / 0.3139, against the control's 0.3121 / 0.3176,
    each also ~1.6x the training time; neither was kept. Nor were LightGBM settings:
    ``truncation_level`` 10 0.3059 / 0.3138, ``feature_fraction`` 0.7 0.3114 / 0.3154,
    ``learning_rate`` 0.03 with 500 trees 0.3112 / 0.3156. The seed alone (``seed`` 1:
    other training queries, anchors and validation users) gives 0.3094 / 0.3142: a seed
    moves these dev figures by ~0.003, as much as any of the changes tried.
    """

    enabled: bool = True
    seed: int = 0
    num_threads: int = 2  # fixed: LightGBM's result may depend on the thread count
    num_leaves: int = 31
    # chosen on the cj-completion dev split (see above): 0.05 gave type NDCG@10 0.3180 in
    # ~160 trees against 0.3106 at 0.1 in ~40 (one row per type trains twice as fast, so the
    # extra trees cost no more than the old setting did)
    learning_rate: float = 0.05
    n_estimators: int = 300
    early_stopping_rounds: int = 30
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    lambda_l2: float = 1.0
    truncation_level: int = 20
    label_days: float = 42.0  # basket data: the last six weeks are the labels
    min_types: int = 4  # a label basket needs this many distinct product types
    min_history_baskets: int = 5
    max_queries: int = 9000  # dev split: every eligible label basket (9,377) beat 3,000 (0.3092 vs 0.3080)
    # a fold's bundles and their sessions leave its history: small folds keep it close to the full data
    bundle_folds: int = 10
    max_held_per_bundle: int = 3
    valid_share: float = 0.2
    min_queries: int = 40  # fewer training queries than this: the fallback blend ranks
    query_share: float = 0.25  # training queries given a synthetic need (a target's product type)
    half_life_days: float = 28.0  # recency weighting of the repeat history
    # the ``blend`` feature: the type-level buy-again+co-occurrence baseline's score, with
    # that baseline's own dev choice (eval/results/dev-choices.json: best of its grid on the
    # cj-completion dev split, type level, w 0.8, type pairs seen >= 3 times)
    blend_weight: float = 0.8
    blend_min_count: float = 3.0
    # basket data: train on one SKU per product type (retrieval.ranker._type_representatives),
    # as a type-level list reads it; dev split 0.3106 against 0.3092 with every SKU
    one_row_per_type: bool = True
    # pool sizes per generator (the pool is their union, several hundred items)
    repeat_k: int = 150
    # + the usual SKU of the user's N most bought types (retrieval.pool); dev split: 100
    # raised the pool's type recall (0.68 -> 0.73 of the basket's types) but not NDCG
    repeat_types_k: int = 0
    cooc_k: int = 80
    cooc_once_k: int = 40
    cooc_min_frequent: int = 10  # fewer frequent (count >= 2) pairs than this: back off to pairs seen once
    type_cooc_types: int = 15
    type_cooc_min_count: float = 5.0  # type pairs seen fewer times are noise
    similar_k: int = 30
    semantic_k: int = 40
    profile_k: int = 20
    type_popular_per_type: int = 3
    popular_k: int = 30
    role_k: int = 5
    # worded reasons for the first N ranked candidates only: LightGBM's pred_contrib costs
    # ~0.3 ms a row (TreeSHAP), against ~0.01 ms for a plain score
    explain_k: int = 12  # the LLM's prompt shows 12 candidates; rule bundles draw from the top too


class LLMConfig(BaseModel):
    model: str | None = None  # None: the packaged SmolLM2 GGUF
    # a LoRA adapter merged into the model: a folder, or the name of one shipped in
    # assistant/llm/adapters ("smollm2-bundles"); None (the default) is the base model
    # (the chat app passes "smollm2-bundles" unless told otherwise: app.APP_ADAPTER)
    adapter: str | None = None
    # how the model decodes: "torch" (llguidance-constrained JSON, the grammar's forced
    # tokens fed in one pass), or "onnxruntime-genai" (CPU only: llguidance inside the
    # runtime, the model in a child process). With forced tokens torch takes 1.7 s a
    # tuned proposal against 2.9 s on the runtime (idle, both valid before repair;
    # bench/results/decode.json), so torch is the default.
    backend: Literal["torch", "onnxruntime-genai"] = "torch"
    # the chat's streamed intro sentence races the rule bundles and gives way to the fixed
    # one when they are ready first: "gpu" lets the model try only on a GPU (on 2 CPU
    # cores the bundles won every measured turn, and the race only slowed them)
    intro: Literal["gpu", "always", "never"] = "gpu"
    # Two bundles of compact JSON take ~110-130 tokens; at ~20 tokens/s on 2 CPU cores
    # that keeps an LLM proposal near 6-7 s. Three bundles need ~220 tokens.
    max_new_tokens: int = 150
    timeout_s: float = 20.0
    max_bundle_size: int = 4
    min_bundle_size: int = 2
    bundles_per_prompt: int = 2
    prompt_candidates: int = 12


class Settings(BaseModel):
    """Everything tunable, in one place. Build with ``Settings()`` for the defaults."""

    data_dir: Path = Field(default_factory=default_data_dir)
    chroma_url: str | None = Field(default_factory=lambda: env_settings().chroma_url or None)
    embedding_batch_size: int = 256
    # recent query embeddings kept in memory while serving (~1.5 KiB each); never on disk
    query_embedding_cache: int = 2048
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    product_features: ProductFeatureConfig = Field(default_factory=ProductFeatureConfig)
    # one objective for shoppers and merchandisers (eval/README.md: a dev grid that dropped
    # the sales term gained completion NDCG but broke three shopper scenarios; not adopted)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    catalogue: CatalogueConfig = Field(default_factory=CatalogueConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    ranker: RankerConfig = Field(default_factory=RankerConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
