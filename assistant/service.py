"""``BundleAssistant``: the one entry point used by the app, the CLI and eval.

A recommendation runs the same LangChain steps — retrieve → prompt → LLM → validate →
rerank — whatever calls it, in two parts: :meth:`BundleAssistant.retrieve` (profile, query
vector, role plan, candidates) and :meth:`BundleAssistant.propose_and_rank` (proposals,
composition, rerank), so that the chat's LLM pass reuses the retrieval of its rule pass.
The LLM proposes; the catalogue and the reranker decide.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

import numpy as np
from langchain_core.runnables import RunnableLambda
from pydantic import BaseModel, Field

from retrieval.candidates import Candidate, CandidateRetriever
from retrieval.config import ObjectiveConfig, Settings
from retrieval.embeddings import Embedder
from retrieval.filters import mask
from retrieval.index import Index
from retrieval.profiles import UserProfile, guest_profile
from retrieval.ranker import sharpened
from retrieval.schema import Constraints

from .compose import Composer, Composition, RolePlan, ShopperContext, TypeCatalogue, distinct, parse_need, plan_for
from .errors import ServiceError, UnknownProduct, UnknownUser  # re-exported: callers import them from here
from .nlu.need import Need
from .privacy import pseudonymise
from .proposer import (
    ProposalReport,
    constraints_text,
    numbered,
    propose_with_llm,
    propose_with_rules,
)
from .reranker import (
    BundleCandidate,
    BundleItem,
    ComponentScore,
    RerankResult,
    ScoringContext,
    in_relevance_order,
    in_slate_order,
    rerank,
)

if TYPE_CHECKING:
    from .merchandiser import IdeasResult

Mode = Literal["rule", "llm", "llm+rule"]
MODES: tuple[str, ...] = ("rule", "llm", "llm+rule")


ShownItem = BundleItem  # a shown bundle's items are the reranker's catalogue items, one record


class ShownBundle(BaseModel):
    rank: int
    name: str
    items: list[ShownItem]
    list_price: float | None
    bundle_price: float | None
    discount: float
    savings: float | None
    price_known: bool
    margin_rate: float
    score: float
    score_breakdown: dict[str, ComponentScore]
    explanation: str
    source: str
    sources: list[str]
    llm_reason: str
    item_reasons: dict[str, list[str]] = Field(default_factory=dict)  # product id -> the ranker's reasons

    @property
    def item_ids(self) -> list[str]:
        return [i.product_id for i in self.items]


LLMInfo = ProposalReport  # a recommendation's llm block is the proposer's report, one record


class Recommendation(BaseModel):
    bundles: list[ShownBundle]
    constraints: Constraints
    profile_summary: str
    mode: str
    llm: LLMInfo
    candidates: list[dict] = Field(default_factory=list)  # product_id, reason, score
    rejected: int = 0
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    need: Need | None = None  # what was understood (the need-aware path only)
    roles: list[dict] = Field(default_factory=list)  # the plan: role -> its options


@dataclass(frozen=True)
class Retrieved:
    """A request up to its candidates (:meth:`BundleAssistant.retrieve`): who asks, for
    what, under which constraints, the query vector, the need's role plan and the
    retrieved pool. Never changed once made: every :meth:`~BundleAssistant.propose_and_rank`
    pass starts from fresh copies of its lists and sets, so a chat turn's rule pass and
    its LLM pass are independent and each is deterministic."""

    query: str
    profile: UserProfile
    anchors: tuple[str, ...]
    constraints: Constraints  # the need's hard parts merged in
    k: int
    objective: ObjectiveConfig
    template: str
    boosted: frozenset[str]
    demoted: frozenset[str]
    need: Need | None = None
    query_vec: np.ndarray | None = None
    plan: RolePlan | None = None
    candidates: tuple[Candidate, ...] = ()
    timings: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    seconds: float = 0.0  # profile + retrieval: part of every pass's total


@dataclass
class _Request:
    """State that flows through the proposal and rerank steps (one per pass)."""

    query: str
    profile: UserProfile
    anchors: tuple[str, ...]
    constraints: Constraints
    k: int
    mode: Mode
    objective: ObjectiveConfig
    template: str
    boosted: set[str]
    demoted: set[str]
    query_vec: np.ndarray | None = None
    candidates: list[Candidate] = field(default_factory=list)
    proposals: list[BundleCandidate] = field(default_factory=list)
    report: ProposalReport = field(default_factory=ProposalReport)
    result: RerankResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    need: Need | None = None
    plan: RolePlan | None = None
    composition: Composition | None = None
    secondary: set[tuple[str, ...]] = field(default_factory=set)  # composed fill-ins, ranked after the rest


def empty_answer_note(result: RerankResult, constraints: Constraints, *, composed: bool) -> str | None:
    """Why a request got no bundle, in the shopper's terms: its constraints when some were
    set or a proposal broke one; too few kinds of product when nothing could be paired; None
    for a composed need, whose empty answer is explained where it is composed."""
    if result.rejected or constraints.model_dump(exclude_defaults=True):
        return "No bundle satisfies every constraint; try a larger budget or fewer exclusions."
    if composed:
        return None
    return ("The products that match are too few kinds to make a bundle; "
            "try naming a meal, an occasion or a product to build on.")


class BundleAssistant:
    def __init__(self, settings: Settings | None = None, *, llm=None, embedder: Embedder | None = None):
        self.settings = settings or Settings()
        self._llm = llm
        self._embedder = embedder
        self._index: Index | None = None
        self._retriever: CandidateRetriever | None = None
        self._types: TypeCatalogue | None = None
        self._rows: dict[str, int] | None = None
        self._lock = threading.Lock()
        self.retrieval = RunnableLambda(self._retrieve_step, name="retrieve")
        self.ranking = (
            RunnableLambda(self._propose_step, name="propose")
            | RunnableLambda(self._rerank_step, name="rerank")
        )

    # -- lazily opened parts (the app opens once and shares them) --------------------
    @property
    def index(self) -> Index:
        with self._lock:
            if self._index is None:
                self._index = Index(self.settings)
            return self._index

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder(batch_size=self.settings.embedding_batch_size,
                                          cache_size=self.settings.query_embedding_cache)
            return self._embedder

    @property
    def retriever(self) -> CandidateRetriever:
        if self._retriever is None:
            self._retriever = CandidateRetriever(self.index, self.embedder, self.settings.retrieval)
        return self._retriever

    @property
    def types(self) -> TypeCatalogue:
        """The catalogue by product type (composition's view), built once per index."""
        if self._types is None:
            self._types = TypeCatalogue(self.index.products, vectors_of=self._vectors_of)
        return self._types

    def _vectors_of(self, ids: list[str]) -> dict[str, np.ndarray]:
        """Product embeddings by id, in one vectorised lookup (``Index.embeddings_of`` looks
        up one id at a time: ~10 µs each, and composition asks for ~1k per request)."""
        rows = self._row_positions()
        picked = [i for i in ids if i in rows]
        matrix = self.index.item_embeddings[np.fromiter((rows[i] for i in picked), dtype=np.int64, count=len(picked))]
        return dict(zip(picked, matrix))

    def _row_positions(self) -> dict[str, int]:
        if self._rows is None:
            self._rows = {str(p): i for i, p in enumerate(self.index.products["product_id"])}
        return self._rows

    @property
    def composer(self) -> Composer:
        catalogue = self.index.catalogue
        return Composer(self.types, lambda pid: str(catalogue.at[pid, "department"]))

    @property
    def llm(self):
        if self._llm is None:
            from .llm import get_llm

            self._llm = get_llm(self.settings.llm.model, adapter=self.settings.llm.adapter,
                                  backend=self.settings.llm.backend)
        return self._llm

    # -- users -----------------------------------------------------------------------
    def user_key(self, user_id: str) -> str:
        return pseudonymise(str(user_id), data_dir=self.settings.data_dir)

    def profile(self, user_id: str) -> UserProfile:
        profile = self.index.profile(self.user_key(user_id))
        if profile is None:
            raise UnknownUser(f"unknown user '{user_id}': no profile in the index (source {self.index.source})")
        return profile

    def guest(self, session_id: str = "cli", query: str = "") -> UserProfile:
        vec = self.embedder.encode([query]) if query.strip() else None
        return guest_profile(f"guest-{session_id}", vec)

    # -- search ----------------------------------------------------------------------
    def warm_up(self) -> None:
        """Open the index, the embedder and the retrieval tables before the first request,
        then keep all of it out of the cyclic garbage collector's full passes: on the full
        catalogue one pass over those ~570k objects took up to 275 ms, a stall for
        whichever request triggered it. Whatever is loaded later (the model) can be
        frozen the same way with :func:`gc.freeze`."""
        self.recommend(query="snacks", k=1, use_llm=False)
        self.retriever.prepare()
        self.types.name_vectors()  # composition's type vectors, for needs the lexicon does not know
        gc.freeze()

    def search(self, query: str, user_id: str | None = None, constraints: Constraints | None = None,
               k: int = 10) -> list[dict]:
        """Candidate products for a need, with the reason each was retrieved."""
        if k <= 0:
            raise ServiceError("k must be > 0")
        profile = self.profile(user_id) if user_id else None
        found = self.retriever.retrieve(query, profile, (), constraints or Constraints(), k)
        catalogue = self.index.catalogue
        return [
            {
                "product_id": c.product_id,
                "title": str(catalogue.at[c.product_id, "title"]),
                "price": _price(catalogue.at[c.product_id, "price"]),
                "department": str(catalogue.at[c.product_id, "department"]),
                "reason": c.reason,
                "reasons": c.reasons,
                "score": round(c.score, 4),
            }
            for c in found
        ]

    # -- recommend ---------------------------------------------------------------------
    def recommend(
        self,
        user_id: str | None = None,
        query: str = "",
        anchors: tuple[str, ...] | list[str] = (),
        constraints: Constraints | None = None,
        k: int = 5,
        use_llm: bool = True,
        *,
        mode: Mode | None = None,
        weights: dict[str, float] | None = None,
        template: str = "shopper_bundle",
        profile: UserProfile | None = None,
        boosted: set[str] | None = None,
        demoted: set[str] | None = None,
        need: Need | None = None,
    ) -> Recommendation:
        """Ranked bundles for a user (or a guest) and a need. ``mode`` picks the proposal
        pools: ``rule``, ``llm`` or ``llm+rule`` (the default when ``use_llm``).

        With a ``need`` (see :meth:`understand`), bundles are composed from its roles
        (:mod:`assistant.compose`): one product per role, sized to the servings, distinct
        alternatives. Without one (the offline completion eval: anchors and no text) the
        ranked list stays driven by item relevance alone.

        :meth:`retrieve` then :meth:`propose_and_rank`; a caller with several passes over
        one request (the chat: rules first, then the LLM) calls the two itself."""
        _check_k(k)
        mode = _checked_mode(mode or ("llm+rule" if use_llm else "rule"))
        retrieved = self.retrieve(user_id, query, anchors, constraints, k, weights=weights, template=template,
                                  profile=profile, boosted=boosted, demoted=demoted, need=need)
        return self.propose_and_rank(retrieved, mode)

    def retrieve(
        self,
        user_id: str | None = None,
        query: str = "",
        anchors: tuple[str, ...] | list[str] = (),
        constraints: Constraints | None = None,
        k: int = 5,
        *,
        weights: dict[str, float] | None = None,
        template: str = "shopper_bundle",
        profile: UserProfile | None = None,
        boosted: set[str] | None = None,
        demoted: set[str] | None = None,
        need: Need | None = None,
    ) -> Retrieved:
        """Everything a request needs before proposals (see :meth:`recommend` for the
        arguments): the checked request, the profile, the query vector, the need's role
        plan and the candidate pool. Raises :class:`ServiceError` for a bad request."""
        constraints = constraints or Constraints()
        if need is not None:
            constraints = _need_constraints(need, constraints)
            query = query or need.text
        _check_k(k)
        unknown = [a for a in anchors if str(a) not in self.index.row_of.index]
        if unknown:
            raise UnknownProduct(f"unknown anchor product(s): {', '.join(map(str, unknown))}")
        if len(self.index.products) == 0:
            raise ServiceError("the catalogue is empty; build an index with data first")
        start = time.perf_counter()
        if profile is None:
            profile = self.profile(user_id) if user_id else self.guest(query=query)
        objective = ObjectiveConfig(weights=weights) if weights else self.settings.objective
        asked = Retrieved(
            query=query.strip(), profile=profile, anchors=tuple(str(a) for a in anchors),
            constraints=constraints, k=k, objective=objective, template=template,
            boosted=frozenset(boosted or ()), demoted=frozenset(demoted or ()), need=need,
            timings=MappingProxyType({"profile": round(time.perf_counter() - start, 4)}),
        )
        retrieved: Retrieved = self.retrieval.invoke(asked)
        return dataclasses.replace(retrieved, seconds=time.perf_counter() - start)

    def propose_and_rank(self, retrieved: Retrieved, mode: Mode) -> Recommendation:
        """Proposals (rules, the LLM or both, per ``mode``), composition and the rerank,
        over the output of :meth:`retrieve`. ``retrieved`` is left as it was: this pass works
        on fresh copies of its lists and sets."""
        _checked_mode(mode)
        start = time.perf_counter()
        request = _Request(
            query=retrieved.query, profile=retrieved.profile, anchors=retrieved.anchors,
            constraints=retrieved.constraints.model_copy(deep=True), k=retrieved.k, mode=mode,
            objective=retrieved.objective, template=retrieved.template,
            boosted=set(retrieved.boosted), demoted=set(retrieved.demoted),
            query_vec=retrieved.query_vec, candidates=list(retrieved.candidates),
            timings=dict(retrieved.timings), need=retrieved.need, plan=retrieved.plan,
        )
        request = self.ranking.invoke(request)
        return self._recommendation(request, retrieved.seconds + time.perf_counter() - start)

    def understand(self, text: str, previous: Need | None = None) -> Need:
        """The one reading of a shopper's message (CLI ``--parse``, the chat and eval)."""
        return parse_need(text, previous=previous)

    def recommend_text(self, text: str, user_id: str | None = None, *, previous: Need | None = None,
                       **options) -> Recommendation:
        """:meth:`recommend` for a message: understood once, then composed."""
        need = self.understand(text, previous)
        return self.recommend(user_id=user_id, query=need.text or text, need=need, **options)

    def bundle_items(self, item_ids: list[str] | tuple[str, ...], *, use_llm: bool = True, **options):
        """Group given products (a session's items, a merchandiser's list) into bundles,
        each with an intent name. See :mod:`assistant.grouping`."""
        from .grouping import bundle_items

        return bundle_items(self, list(item_ids), use_llm=use_llm, **options)

    def _retrieve_step(self, asked: Retrieved) -> Retrieved:
        t = time.perf_counter()
        query_vec = self.embedder.encode_one(asked.query) if asked.query else None
        plan = self._plan(asked.need, asked.anchors, query_vec) if asked.need is not None else None
        types = self._plan_types(plan)
        candidates = self.retriever.retrieve(
            asked.query, asked.profile, asked.anchors, asked.constraints, self.settings.retrieval.max_candidates,
            query_vec=query_vec, **({"types": types} if types else {}),
        )
        timings = MappingProxyType({**asked.timings, "retrieve": round(time.perf_counter() - t, 4)})
        return dataclasses.replace(asked, query_vec=query_vec, plan=plan, candidates=tuple(candidates),
                                   timings=timings)

    def _plan(self, need: Need, anchors: tuple[str, ...], query_vec: np.ndarray | None) -> RolePlan | None:
        if anchors:
            return None  # anchors ask for completion of a basket, not a composed need
        need_vec = query_vec
        if need_vec is None and need.text.strip():
            need_vec = self.embedder.encode_one(need.text)
        cop = self.index.copurchase
        return plan_for(need, self.types, query_vec=need_vec,
                        complement_types=lambda kind, k: cop.complement_types(kind, k=k))

    def _plan_types(self, plan: RolePlan | None) -> list[str]:
        """The product types of the plan's options, for retrieval to add to the pool."""
        if plan is None:
            return []
        kinds: dict[str, None] = {}
        for role in plan.roles:
            for option in role.options:
                for pid in self.types.matching(option.match)[:1]:
                    kinds.setdefault(self.types.fact(pid)[3], None)
        return [k for k in kinds if k]

    def _compose(self, req: _Request) -> None:
        """The core's bundles for the need: roles filled with this shopper's best products."""
        if req.plan is None or req.need is None:
            return
        preference = req.profile.preference_vector()
        if preference is None:
            preference = req.query_vec
        ctx = ShopperContext(
            allowed=self._allowed_fast(req),
            relevance={c.product_id: c.score for c in req.candidates},
            preference=preference,
            embeddings=self._vectors_of,
            favourites=frozenset(req.profile.favourite_items),
            demoted=frozenset(req.demoted), boosted=frozenset(req.boosted),
            price_level=_price_level(req.profile),
        )
        composer = self.composer
        req.composition = composer.prepare(req.plan, req.need, ctx, budget=req.constraints.budget)
        # exactly the alternatives to show: which of them leads is the reranker's call
        for b in composer.compose(req.composition, k=req.k):
            if b.fallback:
                req.secondary.add(tuple(b.item_ids))
            req.proposals.append(BundleCandidate(item_ids=b.item_ids, quantities=b.quantities, source="rule",
                                                 name=b.name))
        missing = req.composition.unfilled_essential()
        if missing:
            req.notes.append(f"No {' or '.join(m.lower() for m in missing)} in the catalogue passes this "
                             "request's constraints, so no bundle is built around it.")
        elif not req.proposals:
            req.notes.append("Nothing in the catalogue fills this request's roles within its constraints.")

    def _allowed_fast(self, req: _Request):
        """The same verdicts as :meth:`_allowed`, from one vectorised mask over the
        catalogue (``retrieval.filters``): composition asks about ~1k products a request,
        and a per-product check with word exclusions costs ~0.5 ms each."""
        passing = mask(self.index.products, req.constraints)
        rows = self._row_positions()
        return lambda pid: (i := rows.get(pid)) is not None and bool(passing[i])

    def _allowed(self, req: _Request):
        return lambda pid: self.retriever.allowed(pid, req.constraints)

    def _propose_step(self, req: _Request) -> _Request:
        t = time.perf_counter()
        if req.plan is not None:
            return self._propose_composed(req)
        cfg = self.settings.llm
        # a composed bundle shown earlier can be the anchor set ("more like bundle 2"):
        # growing it needs room for one more product
        size = max(req.constraints.max_bundle_size or 3, len(req.anchors) + 1 if req.anchors else 0)
        max_size = max(size, cfg.max_bundle_size if req.constraints.max_bundle_size is None
                       else req.constraints.max_bundle_size)
        if req.mode in ("llm", "llm+rule"):
            proposals = self._llm_proposals(req, max_size)
            req.proposals += proposals.bundles
            req.report = proposals.report
            if proposals.report.fallback:
                req.notes.append("The assistant's language model was unavailable for this answer "
                                 f"({proposals.report.error or 'no valid bundle'}); showing rule-based bundles.")
        req.timings["llm"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        if req.mode in ("rule", "llm+rule") or req.report.fallback:
            req.proposals += propose_with_rules(
                req.candidates, self.index.catalogue, self.index.copurchase.pair_npmi, self._allowed(req),
                constraints=req.constraints, n_bundles=max(req.k * 2, 6), size=size,
                min_size=cfg.min_bundle_size,
            )
        req.timings["rules"] = round(time.perf_counter() - t, 4)
        return req

    def _propose_composed(self, req: _Request) -> _Request:
        """Need path: the core composes; the LLM (when on) proposes from the role products,
        and each of its bundles is snapped onto the roles, so roles, products, quantities
        and prices stay the core's decisions."""
        t = time.perf_counter()
        self._compose(req)
        req.timings["rules"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        if req.mode in ("llm", "llm+rule") and req.composition is not None and req.proposals:
            pool = {c.product_id: c for c in req.candidates}
            role_first = [pool.get(pid) or Candidate(pid, 0.0, ["role"]) for pid in req.composition.role_products()]
            rest = [c for c in req.candidates if c.product_id not in {r.product_id for r in role_first}]
            shown_to_llm = _Request(**{**req.__dict__, "candidates": role_first + rest})
            proposals = self._llm_proposals(shown_to_llm, MAX_COMPOSED_ITEMS)
            req.report = proposals.report
            composer = self.composer
            for proposal in proposals.bundles:
                snapped = composer.snap(req.composition, proposal.item_ids)
                if snapped is not None:
                    req.proposals.append(BundleCandidate(item_ids=snapped.item_ids, quantities=snapped.quantities,
                                                         source="llm", name=snapped.name,
                                                         llm_reason=proposal.llm_reason))
            if proposals.report.fallback:
                req.notes.append("The assistant's language model was unavailable for this answer "
                                 f"({proposals.report.error or 'no valid bundle'}); showing rule-based bundles.")
            if req.mode == "llm":  # the LLM's bundles only, unless it gave none
                llm_only = [p for p in req.proposals if p.source == "llm"]
                req.proposals = llm_only or req.proposals
        req.timings["llm"] = round(time.perf_counter() - t, 4)
        return req

    def _llm_proposals(self, req: _Request, max_size: int):
        cfg = self.settings.llm
        try:
            llm = self.llm
        except Exception as exc:  # a model that cannot load is a fallback, not a crash
            from .proposer import Proposals

            return Proposals([], ProposalReport(fallback=True, error=f"model failed to load: {exc}"))
        shown = numbered(req.candidates, self.index.catalogue, cfg.prompt_candidates)
        values = {
            "profile": req.profile.summary,
            "request": _fence_request(req.query),
            "constraints": constraints_text(req.constraints),
            "objective": ", ".join(f"{k} {v:.2f}" for k, v in req.objective.weights.items()),
        }
        return propose_with_llm(
            llm, req.template, values, shown, self._allowed(req),
            n_bundles=cfg.bundles_per_prompt, min_size=cfg.min_bundle_size, max_size=max_size,
            max_new_tokens=cfg.max_new_tokens, timeout_s=cfg.timeout_s,
        )

    def _rerank_step(self, req: _Request) -> _Request:
        t = time.perf_counter()
        ids = {pid for b in req.proposals for pid in b.item_ids}
        preference = req.profile.preference_vector()
        if preference is None:
            preference = req.query_vec
        ctx = ScoringContext(
            products=self.index.catalogue,
            embeddings=self.index.embeddings_of(ids),
            preference=preference,
            pair_npmi=self.index.copurchase.pair_npmi,
            objective=req.objective,
            pricing=_pricing_for(self.settings.pricing, req.constraints),
            constraints=req.constraints,
            demoted=req.demoted,
            boosted=req.boosted,
            min_bundle_size=self.settings.llm.min_bundle_size,
            max_bundle_size=max(self.settings.llm.max_bundle_size, req.constraints.max_bundle_size or 0,
                                MAX_COMPOSED_ITEMS if req.plan is not None else 0,
                                len(req.anchors) + 1 if req.anchors else 0),
            # the item ranker's relevance: the preference and anchor-item complementarity
            relevance={c.product_id: sharpened(c.score, self.settings.objective.relevance_temperature)
                       for c in req.candidates if c.reason != "anchor"},
            anchors=frozenset(req.anchors) | frozenset(req.constraints.pinned),
            item_reasons={c.product_id: c.why for c in req.candidates if c.why},
        )
        if req.plan is None:
            req.result = rerank(req.proposals, ctx, None)
            req.result.ranked = in_slate_order(req.result.ranked, ctx, req.k)
            if req.anchors:
                req.result.ranked = [in_relevance_order(b, ctx.relevance, req.anchors) for b in req.result.ranked]
        else:  # shown bundles are real alternatives: distinct product types
            full = rerank(req.proposals, ctx, None)
            # the bundles of the kinds the shopper named lead; the usual alternatives follow
            full.ranked.sort(key=lambda b: tuple(b.item_ids) in req.secondary)
            kinds = self.index.copurchase.product_type
            full.ranked = distinct(full.ranked, lambda b: {kinds.get(i, "") or i for i in b.item_ids}, req.k)
            req.result = full
        req.timings["rerank"] = round(time.perf_counter() - t, 4)
        return req

    def _recommendation(self, req: _Request, total: float) -> Recommendation:
        result = req.result
        assert result is not None, "the rerank step always sets a result"
        bundles = [_shown(rank, b) for rank, b in enumerate(result.ranked, start=1)]
        note = empty_answer_note(result, req.constraints, composed=req.plan is not None) if not bundles else None
        if note:
            req.notes.append(note)
        report = req.report
        return Recommendation(
            bundles=bundles,
            constraints=req.constraints,
            profile_summary=req.profile.summary,
            mode=req.mode,
            llm=report.model_copy(update={"used": req.mode != "rule"}),
            candidates=[{"product_id": c.product_id, "reason": c.reason, "score": round(c.score, 4),
                         "reasons": list(c.reasons), "why": list(c.why)} for c in req.candidates],
            rejected=len(result.rejected),
            notes=req.notes,
            timings={**req.timings, "total": round(total, 4)},
            need=req.need,
            roles=req.plan.summary() if req.plan is not None else [],
        )

    # -- merchandiser ideas --------------------------------------------------------------
    def ideas(self, theme: str, k: int = 10, *, min_margin: float | None = None,
              weights: dict[str, float] | None = None, use_llm: bool = False,
              constraints: Constraints | None = None) -> IdeasResult:
        """Distinct bundle ideas for a merchandiser's theme, with the parsed need and its
        chips, every score component, the frontier over all candidates and projected
        performance. See :mod:`assistant.merchandiser`."""
        from .merchandiser import IdeasError, generate_ideas

        try:
            return generate_ideas(self, theme, k, min_margin=min_margin, weights=weights, use_llm=use_llm,
                                  constraints=constraints)
        except IdeasError as exc:
            raise ServiceError(str(exc)) from exc


MAX_COMPOSED_ITEMS = 8  # a composed bundle holds one product per role, at most this many


def _check_k(k: int) -> None:
    if k <= 0:
        raise ServiceError("k must be > 0")


def _checked_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ServiceError(f"mode must be one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]  # one of MODES


def _need_constraints(need: Need, base: Constraints) -> Constraints:
    """The need's hard parts merged into ``base``; "no dairy" reaches the product filter
    as the words it stands for (milk, cheese, butter ...)."""
    from .constraints import expand_exclusions

    merged = need.to_constraints(base)
    words = expand_exclusions(need.exclude, [d for d in need.diets if d in ("vegan", "vegetarian", "pescatarian",
                                                                            "dairy-free", "gluten-free")])
    merged.exclude = list(dict.fromkeys([*merged.exclude, *words]))
    return merged


def _price_level(profile: UserProfile) -> float | None:
    """A household's usual price percentile as 0..1 (its history shapes which products
    fill the roles); None for a guest or a profile without one."""
    pct = profile.price_percentile
    return None if profile.is_guest or pct is None else min(1.0, max(0.0, float(pct) / 100.0))


def _pricing_for(pricing, constraints: Constraints):
    """A merchandiser's minimum margin also bounds the discount: otherwise the default
    discount could push a bundle under that minimum and the bundle would be rejected."""
    if constraints.min_margin is None or constraints.min_margin <= pricing.margin_floor:
        return pricing
    return pricing.model_copy(update={"margin_floor": constraints.min_margin})


def _fence_request(text: str) -> str:
    from prompts import fence

    return fence(text, 300) or "(no request: suggest bundles this shopper would like)"


def _price(value) -> float | None:
    value = float(value)
    return None if value != value else round(value, 2)


def _shown(rank: int, b) -> ShownBundle:
    p = b.price
    return ShownBundle(
        rank=rank, name=b.name or "Bundle", items=[i.model_copy() for i in b.items],
        list_price=p.list_price, bundle_price=p.bundle_price, discount=p.discount, savings=p.savings,
        price_known=p.price_known, margin_rate=round(p.margin_rate_after, 4), score=round(b.score, 6),
        score_breakdown=b.score_breakdown, explanation=b.explanation, source=b.source,
        sources=list(b.sources), llm_reason=b.llm_reason, item_reasons=dict(getattr(b, "item_reasons", {})),
    )
