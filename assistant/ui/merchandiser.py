"""The merchandiser tab: sign-in, a theme, objective weights and constraints, and the
ideas with their products, trade-off plot and projected performance.

Gradio's own ``auth`` would lock the whole app (shoppers too), so the tab has its own
sign-in through :class:`assistant.auth.MerchGate` (constant-time check, back-off after
repeated failures, expiring sessions). The browser session keeps only the gate's token in
``gr.State``, and every merchandiser endpoint checks it, whether the call comes from the
page or from ``gradio_client``.

The theme is read by :meth:`BundleAssistant.ideas`; what it understood comes back as
chips and prefills the constraint fields. A field left as the theme set it (or at 0)
follows the theme; a value typed there wins over the theme's words. Editing the theme
resets the fields the theme had filled, so a new "margin at least 40%" is read afresh.
"""

import re
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from retrieval.config import OBJECTIVE_COMPONENTS, ObjectiveConfig, env_settings
from retrieval.schema import Constraints

from ..auth import LoginThrottle, MerchGate
from ..merchandiser import TABLE_COLUMNS, IdeasResult
from ..privacy import pseudonymise
from ..service import BundleAssistant, ServiceError
from .render import Titles, md, merch_chips_html

MERCH_USER_ENV, MERCH_PASSWORD_ENV = "BUNDLE_MERCH_USER", "BUNDLE_MERCH_PASSWORD"
OFF_MESSAGE = "The merchandiser tools are off: set BUNDLE_MERCH_USER and BUNDLE_MERCH_PASSWORD."
SIGN_IN_FIRST = "Sign in to the merchandiser tab first (or again: sessions expire)."
THEME_EXAMPLE = "back-to-school lunch bundles, margin at least 30%"
MAX_IDEAS = 30
PREFILLED = ("min_margin", "max_price", "max_items")  # the fields a theme fills
# the frontier's point classes; infeasible ones are faded
FRONTIER_COLORS = {"chosen idea": "#047857", "Pareto-optimal": "#2563eb", "other candidate": "#9ca3af",
                   "fails a constraint": "#e5e7eb"}


def merch_credentials_from_env() -> tuple[str, str] | None:
    """The merchandiser sign-in from the one settings object (``BUNDLE_MERCH_USER`` and
    ``BUNDLE_MERCH_PASSWORD``); None, and the tab off, unless both are set."""
    env = env_settings()
    user, password = env.merch_user, env.merch_password
    return (user, password) if user and password else None


def parse_ids(text: str) -> list[str]:
    return [t for t in re.split(r"[\s,;]+", text or "") if t]


def weights_text(*values: float) -> str:
    """The sliders' weights as the objective will use them (normalised to sum 1)."""
    raw = dict(zip(OBJECTIVE_COMPONENTS, values))
    if not any((v or 0) > 0 for v in raw.values()):
        return "*Set at least one objective weight above 0.*"
    norm = ObjectiveConfig(weights={k: float(v or 0) for k, v in raw.items()}).weights
    return "Normalised objective: " + " · ".join(f"{k} **{v:.0%}**" for k, v in norm.items())


def explicit_constraints(max_price: float | None, min_unit: float | None, max_unit: float | None,
                         max_items: float | None, depts: list[str] | None, pins: list[str],
                         excludes: list[str]) -> Constraints:
    """Only what the console's fields set (0 or empty: not set), so the theme's words
    fill the rest (:func:`assistant.merchandiser.merge_constraints`)."""
    fields: dict[str, Any] = {}
    if max_price:
        fields["budget"] = float(max_price)
    if min_unit:
        fields["min_unit_price"] = float(min_unit)
    if max_unit:
        fields["max_unit_price"] = float(max_unit)
    if max_items:
        fields["max_bundle_size"] = int(max_items)
    for name, value in (("departments", list(depts or [])), ("pinned", pins), ("excluded_products", excludes)):
        if value:
            fields[name] = value
    return Constraints(**fields)


def field_values(result: IdeasResult) -> dict[str, float]:
    """The constraint fields as the ideas were computed (theme and edits merged)."""
    c = result.constraints
    return {"min_margin": float(c.min_margin or 0), "max_price": float(c.budget or 0),
            "max_items": float(c.max_bundle_size or 0)}


def chip_pairs(result: IdeasResult, edited: dict[str, float]) -> list[tuple[str, str]]:
    """The theme's chips; a field typed in the console replaces the theme's chip for it."""
    labels = {"min_margin": lambda v: f"margin ≥ {v:.0%}", "max_price": lambda v: f"bundle under ${v:.2f}",
              "max_items": lambda v: f"at most {int(v)} items"}
    replaced = {"min_margin": {"min_margin"}, "max_price": {"max_price"}, "max_items": {"items"}}
    gone = {f for name in edited for f in replaced[name]}
    pairs = [(c.field, c.label) for c in result.chips if c.field not in gone]
    pairs += [(name, labels[name](v) + " (set here)") for name, v in edited.items() if v]
    return pairs


def frontier_plot(result: IdeasResult) -> Any:
    """Margin against preference over every candidate bundle, chosen ones highlighted,
    infeasible ones faded; axes from the frontier's own (honest, from 0) ranges."""
    frame = result.frontier.frame()
    frame["kind"] = [
        "chosen idea" if chosen else "fails a constraint" if not ok else "Pareto-optimal" if pareto
        else "other candidate"
        for chosen, ok, pareto in zip(frame["chosen"], frame["feasible"], frame["pareto"])
    ]
    # drawn in row order: faded ones first, the chosen ideas last (on top)
    order = {"fails a constraint": 0, "other candidate": 1, "Pareto-optimal": 2, "chosen idea": 3}
    frame = frame.sort_values("kind", key=lambda k: k.map(order), kind="stable").reset_index(drop=True)
    fr = result.frontier
    return gr.ScatterPlot(value=frame, x="margin", y="preference", color="kind", color_map=FRONTIER_COLORS,
                          x_lim=list(fr.x_range), y_lim=list(fr.y_range), x_title=fr.x_label, y_title=fr.y_label,
                          title=f"Margin vs preference: all {len(frame)} candidate bundles",
                          tooltip=["name", "margin", "preference", "score", "kind", "rejected"])


# the table on screen: result.table()'s columns with the products up front ("roles" is in
# the name already, and stays in the exports)
SHOWN_FIRST = ["rank", "name", "products", "unit_prices", "bundle_price", "list_price", "discount",
               "margin_after_discount"]


SHOWN_COLUMNS = [*SHOWN_FIRST, *(c for c in TABLE_COLUMNS if c not in SHOWN_FIRST and c != "roles")]


def shown_table(result: IdeasResult) -> pd.DataFrame:
    return result.table()[SHOWN_COLUMNS]


def column_widths(columns: list[str]) -> list[str | int]:
    wide = {"name": "240px", "products": "420px", "unit_prices": "150px", "product_ids": "200px"}
    return [wide.get(c, "60px" if c == "rank" else "110px") for c in columns]


def status_text(result: IdeasResult) -> str:
    total = result.timings.get("total", 0.0)
    lead = (f"**{len(result.ideas)} ideas** from {result.candidates} candidate bundles · "
            f"mode {'LLM + rules' if result.llm.get('used') else 'rules'} · {total:.1f}s")
    return "\n\n".join([lead, *(f"*{md(e)}*" for e in result.explanations)])


def table_caption(result: IdeasResult) -> str:
    label = next((i.projection.label for i in result.ideas if i.projection is not None), "")
    if not label:
        return "No transaction history is loaded: no projected performance."
    return (f"Projected performance per idea: {md(label)}. Estimates from the loaded history, not forecasts "
            "(formulas in the README).")


class Merchandiser:
    """The tab's handlers (layout and wiring: :func:`merchandiser_tab`)."""

    def __init__(self, assistant: BundleAssistant, credentials: tuple[str, str] | None, *, use_llm: bool):
        self.assistant = assistant
        self.use_llm = use_llm
        data_dir = assistant.settings.data_dir
        # log lines name users and clients only by the project's keyed pseudonym
        self.gate = MerchGate(credentials, throttle=LoginThrottle(
            pseudonymise=lambda value: pseudonymise(value or "-", data_dir=data_dir)))
        catalogue = assistant.index.products
        self.departments = sorted(d for d in catalogue["department"].dropna().unique() if d)
        self.default_weights = assistant.settings.objective.weights
        self.titles = Titles(assistant.index.catalogue)

    @property
    def enabled(self) -> bool:
        return self.gate.enabled

    def require(self, token: str | None) -> None:
        if not self.enabled:
            raise gr.Error(OFF_MESSAGE)
        if self.gate.check(token) is None:
            raise gr.Error(SIGN_IN_FIRST)

    # -- sign-in ------------------------------------------------------------------------

    def login(self, user: str, password: str, token: str | None, request: gr.Request):
        """Sign in; the password field is emptied whatever the outcome."""
        if token:
            self.gate.sign_out(token)
        client = getattr(getattr(request, "client", None), "host", "") if request is not None else ""
        result = self.gate.sign_in(user, password, client=client)
        if not result.ok:
            return None, result.message, gr.update(visible=False), ""
        return result.token, f"Signed in as **{md(str(user))}**.", gr.update(visible=True), ""

    def logout(self, token: str | None):
        self.gate.sign_out(token)
        return None, "Signed out.", gr.update(visible=False)

    # -- ideas ------------------------------------------------------------------------

    def _result(self, theme: str, weights: dict[str, float], min_margin: float | None, k: int,
                constraints: Constraints) -> IdeasResult:
        unknown = [p for p in [*constraints.pinned, *constraints.excluded_products]
                   if p not in self.assistant.index.row_of.index]
        if unknown:
            raise gr.Error(f"Unknown product id(s): {', '.join(unknown[:10])}")
        try:
            return self.assistant.ideas((theme or "").strip(), k, min_margin=min_margin, weights=weights,
                                        use_llm=self.use_llm, constraints=constraints)
        except (ServiceError, ValueError) as exc:  # plain words, never a pydantic dump
            raise gr.Error(str(exc).split("\n")[0]) from exc

    def generate(self, theme: str, w_pref: float, w_comp: float, w_margin: float, w_sales: float,
                 min_margin: float, max_price: float | None, min_unit: float | None, max_unit: float | None,
                 depts: list[str] | None, pins: str, excludes: str, k: float, max_items: float | None,
                 prefill: dict[str, float] | None, token: str | None):
        """Ideas for the theme: chips, table, caption, plot, CSV, JSON, status, then the
        constraint fields prefilled with what was used, and that prefill."""
        self.require(token)
        weights = {c: float(w or 0) for c, w in zip(OBJECTIVE_COMPONENTS, (w_pref, w_comp, w_margin, w_sales))}
        fields = {"min_margin": float(min_margin or 0), "max_price": float(max_price or 0),
                  "max_items": float(max_items or 0)}
        edited = {n: v for n, v in fields.items() if v and v != (prefill or {}).get(n)}
        constraints = explicit_constraints(edited.get("max_price"), min_unit, max_unit, edited.get("max_items"),
                                           depts, parse_ids(pins), parse_ids(excludes))
        k = max(1, min(MAX_IDEAS, int(k or 10)))
        result = self._result(theme, weights, edited.get("min_margin"), k, constraints)
        folder = Path(tempfile.mkdtemp(prefix="bundle-ideas-"))
        csv_path = result.write_csv(folder / "bundle-ideas.csv")
        json_path = result.write_json(folder / "bundle-ideas.json")
        used = field_values(result)
        # what the theme alone filled: the fields the user did not type
        theme_filled = {n: v for n, v in used.items() if n not in edited}
        return (merch_chips_html(chip_pairs(result, edited)), shown_table(result), table_caption(result),
                frontier_plot(result), str(csv_path), str(json_path), status_text(result),
                used["min_margin"], used["max_price"], used["max_items"], theme_filled)

    @staticmethod
    def theme_edited(min_margin: float, max_price: float | None, max_items: float | None,
                     prefill: dict[str, float] | None):
        """A new theme is read afresh: the fields the last theme filled go back to 0
        (values typed here stay)."""
        prefill = prefill or {}
        values = {"min_margin": min_margin, "max_price": max_price, "max_items": max_items}
        reset = [0 if prefill.get(n) and values[n] == prefill[n] else values[n] for n in PREFILLED]
        return (*reset, {})

    def search(self, query: str, token: str | None) -> pd.DataFrame:
        self.require(token)
        columns = ["product_id", "title", "display_title", "price", "department", "reason"]
        if not (query or "").strip():
            return pd.DataFrame(columns=columns)
        hits = pd.DataFrame(self.assistant.search(query.strip()[:200], k=15))
        hits["display_title"] = [self.titles.of(p, t) for p, t in zip(hits["product_id"], hits["title"])]
        return hits[columns]


# ------------------------------------------------------------------------------ layout


def _sign_in_row(enabled: bool) -> tuple[Any, Any, Any, Any, Any]:
    if not enabled:
        gr.Markdown("**The merchandiser tools are off.** Set `BUNDLE_MERCH_USER` and "
                    "`BUNDLE_MERCH_PASSWORD` in the environment and restart the app.")
    with gr.Row(visible=enabled):
        user = gr.Textbox(label="User", max_lines=1, scale=2)
        password = gr.Textbox(label="Password", type="password", max_lines=1, scale=2)
        login = gr.Button("Sign in", variant="primary", scale=1)
        logout = gr.Button("Sign out", scale=1)
    status = gr.Markdown(elem_id="merch-login-status")
    return user, password, login, logout, status


def _controls(m: Merchandiser) -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["theme"] = gr.Textbox(label="Theme", placeholder=THEME_EXAMPLE, max_lines=1, max_length=300)
    with gr.Row():
        c["sliders"] = [gr.Slider(0, 1, value=round(m.default_weights[x], 2), step=0.05, label=x)
                        for x in OBJECTIVE_COMPONENTS]
    c["weights_md"] = gr.Markdown(weights_text(*(m.default_weights[x] for x in OBJECTIVE_COMPONENTS)))
    gr.Markdown("Constraints: the theme fills these (see the chips); a value you set here wins. 0 = not set.",
                elem_classes="ba-caption")
    with gr.Row():
        c["min_margin"] = gr.Slider(0, 0.6, value=0, step=0.01, label="Minimum margin after discount")
        c["max_price"] = gr.Number(label="Bundle price up to ($)", value=0, minimum=0)
        c["max_items"] = gr.Number(label="Items per bundle, at most", value=0, minimum=0, precision=0)
        c["min_unit"] = gr.Number(label="Item price from ($)", value=0, minimum=0)
        c["max_unit"] = gr.Number(label="Item price to ($)", value=0, minimum=0)
    with gr.Row():
        c["depts"] = gr.Dropdown(m.departments, multiselect=True, label="Departments (empty: all)")
        c["pins"] = gr.Textbox(label="Pin product ids (in every bundle)", max_lines=1)
        c["excludes"] = gr.Textbox(label="Exclude product ids", max_lines=1)
        c["k"] = gr.Slider(1, MAX_IDEAS, value=10, step=1, label="Ideas")
    c["generate"] = gr.Button("Generate ideas", variant="primary")
    return c


def _results() -> dict[str, Any]:
    r: dict[str, Any] = {}
    r["chips"] = gr.HTML(elem_id="merch-chips")
    r["status"] = gr.Markdown(elem_id="merch-status")
    r["table"] = gr.Dataframe(label="Ideas: products, prices, margin, every score component, projected performance",
                              max_height=460, pinned_columns=2, wrap=True, elem_id="merch-table",
                              headers=SHOWN_COLUMNS, column_widths=column_widths(SHOWN_COLUMNS))
    r["caption"] = gr.Markdown(elem_classes="ba-caption", elem_id="merch-caption")
    with gr.Row():
        r["plot"] = gr.ScatterPlot(x="margin", y="preference", color="kind", elem_id="merch-frontier", scale=3,
                                   title="Margin vs preference over all candidate bundles")
        with gr.Column(scale=1):
            r["csv"] = gr.DownloadButton("Download CSV", elem_id="merch-csv")
            r["json"] = gr.DownloadButton("Download JSON", elem_id="merch-json")
    return r


def _search_box() -> tuple[Any, Any, Any]:
    with gr.Accordion("Find product ids", open=False):
        with gr.Row():
            query = gr.Textbox(label="Search the catalogue", max_lines=1, scale=4)
            button = gr.Button("Search", scale=1)
        results = gr.Dataframe(wrap=True)
    return query, button, results


def merchandiser_tab(m: Merchandiser) -> None:
    """The tab's layout and events; call inside ``gr.Tab``."""
    token, prefill = gr.State(None), gr.State({})
    user, password, login, logout, login_status = _sign_in_row(m.enabled)
    with gr.Column(visible=False) as tools:
        c = _controls(m)
        r = _results()
        query, search, found = _search_box()
    login.click(m.login, [user, password, token], [token, login_status, tools, password], api_name="merch_login")
    logout.click(m.logout, [token], [token, login_status, tools], api_name="merch_logout")
    for s in c["sliders"]:
        s.change(weights_text, c["sliders"], c["weights_md"], api_name=f"merch_weights_{s.label}",
                 api_visibility="private", show_progress="hidden")
    prefilled = [c["min_margin"], c["max_price"], c["max_items"]]
    c["theme"].input(m.theme_edited, [*prefilled, prefill], [*prefilled, prefill], api_visibility="private",
                     show_progress="hidden")
    inputs = [c["theme"], *c["sliders"], c["min_margin"], c["max_price"], c["min_unit"], c["max_unit"],
              c["depts"], c["pins"], c["excludes"], c["k"], c["max_items"], prefill, token]
    outputs = [r["chips"], r["table"], r["caption"], r["plot"], r["csv"], r["json"], r["status"], *prefilled,
               prefill]
    c["generate"].click(m.generate, inputs, outputs, api_name="merch_generate")
    search.click(m.search, [query, token], found, api_name="merch_search")
