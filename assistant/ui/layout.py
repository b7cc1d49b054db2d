"""The app: a shopper tab and a merchandiser tab on one shared assistant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ..feedback import FeedbackStore
from ..service import BundleAssistant
from .merchandiser import Merchandiser, merch_credentials_from_env, merchandiser_tab
from .shopper import CARDS, Persona, Shopper, discover_personas, shopper_tab
from .style import CSS, HEAD

_FROM_ENV = object()


def build_app(
    assistant: BundleAssistant,
    *,
    use_llm: bool = True,
    personas: list[Persona] | None = None,
    feedback: FeedbackStore | None = None,
    merch_credentials: Any = _FROM_ENV,
    cards: int = CARDS,
) -> gr.Blocks:
    """The Gradio Blocks app. ``use_llm=False`` runs rules only (no intro, no LLM
    proposals): fast, for tests. Credentials default to the environment
    (``BUNDLE_MERCH_USER`` / ``BUNDLE_MERCH_PASSWORD``); ``None`` turns the tab off."""
    store = feedback or FeedbackStore(Path(assistant.settings.data_dir) / "feedback.sqlite")
    creds = merch_credentials_from_env() if merch_credentials is _FROM_ENV else merch_credentials
    shopper = Shopper(assistant, store, personas or discover_personas(assistant), use_llm=use_llm, cards=cards)
    merchandiser = Merchandiser(assistant, creds, use_llm=use_llm)
    with gr.Blocks(title="Bundle assistant") as demo:
        gr.Markdown("## Bundle assistant", elem_classes="ba-title")
        with gr.Tabs():
            with gr.Tab("Shop", id="shop"):
                shopper_tab(shopper)
            with gr.Tab("Merchandiser", id="merchandiser"):
                merchandiser_tab(merchandiser)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, *,
           prevent_thread_lock: bool = False, quiet: bool = False) -> str:
    """Queue and serve the app; returns its local URL."""
    demo.queue(default_concurrency_limit=16, max_size=256)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock, quiet=quiet,
        css=CSS, head=HEAD, theme=gr.themes.Soft(primary_hue="emerald"), footer_links=["api"],
        ssr_mode=False, mcp_server=False, share=False, inbrowser=False,
    )
    return url
