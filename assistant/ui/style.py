"""The page's stylesheet and script (passed to ``launch``)."""

from __future__ import annotations

# Colours as variables, with a dark set: every text pair here meets WCAG AA (4.5:1) on the
# card and page backgrounds of both Gradio modes, and bar fills 3:1 against their track
# (tests/test_browser.py measures them).
CSS = """
:root{--ba-accent:#047857;--ba-accent-fg:#ffffff;--ba-chip-bg:#e5e7eb;--ba-chip-fg:#111827;
  --ba-subdued:#4b5563;--ba-track:#d1d5db;--ba-fill:#047857;--ba-neg:#c2410c}
.dark{--ba-accent:#34d399;--ba-accent-fg:#052e16;--ba-chip-bg:#374151;--ba-chip-fg:#f9fafb;
  --ba-subdued:#d1d5db;--ba-track:#4b5563;--ba-fill:#34d399;--ba-neg:#fb923c}
.ba-card,.ba-line{border:1px solid var(--border-color-primary);border-radius:12px;padding:10px 14px;
  background:var(--background-fill-primary);color:var(--body-text-color);box-shadow:0 1px 2px rgba(0,0,0,.05)}
.ba-line{padding:8px 12px}
.ba-head{display:flex;align-items:baseline;gap:8px}
.ba-rank{background:var(--ba-accent);color:var(--ba-accent-fg);border-radius:999px;min-width:1.6em;
  text-align:center;font-weight:700;font-size:.85em;padding:1px 6px}
.ba-name{font-weight:600;flex:1}
.ba-price{font-weight:700;font-size:1.3em;color:var(--ba-accent)}
.ba-line-total{font-weight:700;color:var(--ba-accent);font-variant-numeric:tabular-nums}
.ba-save{font-size:.85em;color:var(--ba-accent)}
.ba-muted,.ba-quiet{color:var(--ba-subdued);font-size:.85em}
.ba-items{list-style:none;padding:0;margin:6px 0}
.ba-items li{display:flex;justify-content:space-between;gap:10px;padding:2px 0;font-size:.9em;
  border-bottom:1px dashed var(--border-color-primary)}
.ba-line .ba-items li{font-size:.8em}
.ba-item-price{white-space:nowrap;font-variant-numeric:tabular-nums}
.ba-why summary{cursor:pointer;font-size:.85em}
.ba-bar{display:grid;grid-template-columns:8.5em 1fr 3.5em;gap:6px;align-items:center;font-size:.8em;margin:2px 0}
.ba-track{background:var(--ba-track);border-radius:4px;height:8px;overflow:hidden;display:block}
.ba-fill{background:var(--ba-fill);height:100%;display:block}
.ba-fill.neg{background:var(--ba-neg)}
.ba-bar-num{text-align:right;font-variant-numeric:tabular-nums}
.ba-note{font-size:.78em;color:var(--ba-subdued);margin-top:4px}
.ba-cart{border:1px solid var(--border-color-primary);border-radius:12px;padding:10px 14px}
.ba-cart-title{font-weight:600}
.ba-total{display:flex;justify-content:space-between;font-weight:700;font-size:1.1em;margin-top:4px}
.ba-understood{display:flex;flex-wrap:wrap;gap:4px}
.ba-chip{background:var(--ba-chip-bg);color:var(--ba-chip-fg);border-radius:999px;padding:1px 8px;font-size:.8em}
.ba-slot,.ba-line-slot{gap:6px !important}
.ba-line-slot button{min-width:2.6em !important}
/* the chat's floating label and icons get a band of their own instead of covering messages */
#chat .wrapper{padding-top:36px;box-sizing:border-box}
#chat .bubble-wrap{height:100%}
.ba-persona-info p{margin:0}
.ba-refine-row,.ba-suggest-row{gap:6px !important;flex-wrap:wrap !important}
.ba-refine-row > *,.ba-suggest-row > *{flex:0 0 auto !important;min-width:0 !important;width:auto !important}
button.ba-refine{border-radius:999px !important;background:var(--ba-chip-bg) !important;
  color:var(--ba-chip-fg) !important}
button.ba-suggest{border-radius:999px !important}
.ba-caption{color:var(--ba-subdued);font-size:.85em}
@media (max-width:640px){
  /* a phone: everything above the first card fits in one screen (tests/test_browser.py) */
  .ba-title h2{font-size:1.1em;margin:0 !important}
  .ba-persona{flex-direction:column;gap:4px !important}
  .ba-persona-info *{font-size:13px !important;line-height:1.35 !important}
  #chat{height:min(280px,34vh) !important}
  .ba-chips{flex-wrap:nowrap !important;overflow-x:auto;gap:6px !important}
  .ba-input-row{flex-wrap:nowrap !important;gap:6px !important}
  .ba-input-row > button{min-width:56px !important;flex:0 0 auto !important;padding-left:8px !important;
    padding-right:8px !important}
  .ba-input-row > *:first-child{min-width:0 !important}
  .ba-chips > *{flex:0 0 auto !important;min-width:0 !important;width:auto !important}
  .ba-main,.ba-chat-col,.ba-cards-col{gap:8px !important}
  /* once there is an answer the examples make room for it (Gradio prefixes every rule
     here with its container, so the anchor is our own row) */
  .ba-main:has(#bundle-card-1 .ba-card) #ba-examples{display:none !important}
}
"""

# Accessible names that say which bundle a button acts on ("Add bundle 2, Beef taco night,
# to cart"): Gradio buttons take no aria-label, so this sets it from the card next to them,
# again whenever the cards change.
HEAD = r"""<script>
(() => {
  const name = (el, text) => { if (el && el.getAttribute('aria-label') !== text) el.setAttribute('aria-label', text); };
  const label = () => {
    document.querySelectorAll('.ba-slot').forEach(slot => {
      const card = slot.querySelector('.ba-card');
      if (!card) return;
      const what = `bundle ${card.dataset.rank}, ${card.dataset.name}`;
      name(slot.querySelector('button.ba-add'), `Add ${what}, to cart`);
      name(slot.querySelector('button.ba-like'), `Like ${what}`);
      name(slot.querySelector('button.ba-dislike'), `Not for me: ${what}`);
    });
    document.querySelectorAll('button.ba-refine').forEach(b => {
      const text = b.textContent.replace(/\s*✕\s*$/, '').trim();
      if (text) name(b, `Undo “${text}”`);
    });
    document.querySelectorAll('.ba-line-slot').forEach(slot => {
      const line = slot.querySelector('.ba-line');
      if (!line) return;
      const what = line.dataset.name;
      name(slot.querySelector('button.ba-less'), `One less ${what}`);
      name(slot.querySelector('button.ba-more'), `One more ${what}`);
      name(slot.querySelector('button.ba-remove'), `Remove ${what} from the cart`);
    });
  };
  new MutationObserver(label).observe(document.documentElement, {subtree: true, childList: true, characterData: true});
})();
</script>"""
