"""The web UI (Gradio) over :class:`~assistant.service.BundleAssistant`.

* :mod:`.render` — HTML and Markdown for cards, cart, chips and the chat (every text escaped);
  the page's CSS and script.
* :mod:`.shopper` — the shopper tab: personas, per-session state, handlers, layout.
* :mod:`.merchandiser` — the merchandiser tab: sign-in through :mod:`assistant.auth`,
  ideas through :meth:`BundleAssistant.ideas`, table, frontier plot and exports.
* :mod:`.layout` — :func:`build_app` puts the tabs together; :func:`launch` serves it.

``app.py`` stays the entry point (warm-up, first index build, command line).
"""

from .layout import build_app, launch
from .merchandiser import merch_credentials_from_env
from .shopper import GUEST, GUEST_KEY, Persona, discover_personas, persona_line

__all__ = ["GUEST", "GUEST_KEY", "Persona", "build_app", "discover_personas", "launch",
           "merch_credentials_from_env", "persona_line"]
