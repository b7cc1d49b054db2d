"""LoRA adapters on top of the base model, and the leakage check eval runs on them.

An adapter folder (written by :mod:`assistant.llm.tuning`) holds the peft weights,
``card.json`` (what it was trained on, with which base), ``sources.json`` (every source id
its examples came from) and ``CARD.md`` / ``loss_curve.png`` for people.

* :func:`apply_adapter` checks that the base model is the one the adapter was trained on
  (a weight fingerprint that survives float32/bfloat16 casts), loads the LoRA weights and
  merges them, so generation costs exactly what the base costs.
* :func:`check_adapter` refuses an adapter whose training sources meet an eval split's
  test cases, and says which ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .base import LLMError

ADAPTERS_DIR = Path(__file__).resolve().parent / "adapters"
PACKAGED_ADAPTER = "smollm2-bundles"
_SIGN_VALUES = 512


class AdapterError(LLMError):
    """The adapter is missing, broken, or made for another base model."""


class AdapterLeak(AdapterError):
    """The adapter was trained on data an eval split tests on."""


def resolve_adapter(adapter: str | Path) -> Path:
    """A folder path, or the name of an adapter shipped in ``assistant/llm/adapters``."""
    path = Path(adapter).expanduser()
    if not path.exists() and (ADAPTERS_DIR / str(adapter)).is_dir():
        path = ADAPTERS_DIR / str(adapter)
    if not (path / "adapter_config.json").is_file():
        shipped = sorted(p.name for p in ADAPTERS_DIR.glob("*") if (p / "adapter_config.json").is_file()) \
            if ADAPTERS_DIR.is_dir() else []
        raise AdapterError(f"no LoRA adapter at {path} (adapter_config.json missing); "
                           f"shipped adapters: {', '.join(shipped) or 'none'}")
    return path


def read_card(adapter: str | Path) -> dict:
    path = resolve_adapter(adapter) / "card.json"
    if not path.is_file():
        raise AdapterError(f"{path.parent} has no card.json: train it with `bundle-assistant train-llm`")
    return json.loads(path.read_text(encoding="utf-8"))


def read_sources(adapter: str | Path) -> set[str]:
    path = resolve_adapter(adapter) / "sources.json"
    if not path.is_file():
        raise AdapterError(f"{path.parent} has no sources.json, so its training data cannot be checked")
    return set(json.loads(path.read_text(encoding="utf-8")))


def base_fingerprint(model: Any, lora: bool = False) -> str:
    """Which base weights these are: the parameter names and shapes, and the signs of the
    first values of every matrix. Signs survive casting to bfloat16/float16, so the same
    base on a GPU matches its CPU fingerprint; another checkpoint does not.

    ``lora``: the model has LoRA layers injected (peft): fingerprint the base weights only.
    """
    h = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "") if lora else name
        h.update(f"{key}:{tuple(param.shape)}".encode())
        if param.dim() == 2:
            head = param.detach().flatten()[:_SIGN_VALUES].float().cpu()
            h.update(bytes((head > 0).to("cpu").numpy().astype("uint8")))
    return h.hexdigest()[:16]


def apply_adapter(model: Any, adapter: str | Path, merge: bool = True) -> tuple[Any, dict]:
    """``model`` with the adapter's LoRA weights (merged unless ``merge`` is False), and
    the adapter's card. Raises :class:`AdapterError` when the card names another base."""
    from peft import PeftModel

    path = resolve_adapter(adapter)
    card = read_card(path)
    expected = card.get("base", {}).get("fingerprint")
    actual = base_fingerprint(model)
    if expected and expected != actual:
        raise AdapterError(
            f"adapter {path.name} was trained on base model {card['base'].get('name')!r} with weight "
            f"fingerprint {expected}, but the loaded model's is {actual}: load it on that base, or retrain")
    try:
        tuned = PeftModel.from_pretrained(model, str(path))
    except Exception as e:  # a broken or foreign adapter file
        raise AdapterError(f"could not load adapter {path}: {e}") from e
    tuned = tuned.merge_and_unload() if merge else tuned
    tuned.eval()
    return tuned, card


# --- leakage -------------------------------------------------------------------------


def domain_of(ds: Any) -> str:
    """A dataset's namespace in source ids: its source name and a hash of its catalogue
    (ids and titles), so Electronic's session 12 is not Clothing's session 12. Every split
    of one source keeps the whole catalogue, so train and test splits share it."""
    products = ds.products.sort_values("product_id")
    text = "\n".join(f"{i}\t{t}" for i, t in zip(products["product_id"].astype(str), products["title"].astype(str)))
    return f"{ds.name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def items_key(domain: str, items: Iterable[str]) -> str:
    """A source id for a set of items (catches the same bundle under another id)."""
    digest = hashlib.sha256(",".join(sorted(map(str, items))).encode()).hexdigest()[:16]
    return f"{domain}:items:{digest}"


def _case_keys(domain: str, case: Any, info: dict) -> set[str]:
    """Source ids a test case stands for, in the namespaces of the adapter's sources."""
    keys: set[str] = set()
    if hasattr(case, "bundles") and hasattr(case, "items"):  # a generation case: a session
        keys.add(f"{domain}:session:{case.case_id}")
        keys |= {items_key(domain, b) for b in case.bundles}
    elif hasattr(case, "anchors"):  # a completion case: its full bundle
        keys.add(items_key(domain, [*case.anchors, *case.targets]))
        if "test_bundles" in info:  # bundlerec-completion: the case id is the bundle id
            keys.add(f"{domain}:bundle:{case.case_id}")
    return keys


def split_keys(test_split: Any) -> set[str]:
    """Every source id an eval split's test cases stand for."""
    domain = domain_of(test_split.train)
    keys: set[str] = set()
    for case in test_split.cases:
        keys |= _case_keys(domain, case, test_split.info)
    return keys


def check_adapter(adapter_dir: str | Path | None, test_split: Any) -> None:
    """None when ``adapter_dir`` (None: no adapter) never saw ``test_split``'s test cases.

    Raises :class:`AdapterLeak` naming how many test sessions/bundles the adapter was
    trained on, a few of them, and what its card says it was trained on.
    """
    if adapter_dir is None:
        return
    sources = read_sources(adapter_dir)
    card = read_card(adapter_dir)
    overlap = sorted(split_keys(test_split) & sources)
    if overlap:
        data = card.get("data", {})
        raise AdapterLeak(
            f"adapter {Path(adapter_dir).name} was trained on {len(overlap)} source(s) this eval split tests "
            f"on (e.g. {', '.join(overlap[:3])}); its card says it learnt from {data.get('dataset')} "
            f"{data.get('protocol')} seed {data.get('seed')} ({data.get('split')}). Scores would be inflated: "
            "evaluate it on the split it was held out from (its seed's test or dev split), or retrain it on "
            "this eval seed's training split.")


def overlapping(sources: Iterable[str], test_split: Any) -> list[str]:
    """The adapter sources that meet ``test_split`` (for reports)."""
    return sorted(split_keys(test_split) & set(sources))
