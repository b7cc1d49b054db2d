"""Structured decoding: JSON constrained by outlines to a pydantic schema.

This module alone knows outlines' internals: it builds the token index of a schema
(cached per model for the last few schemas) and overrides outlines' private
``_bias_logits_torch`` so the masking kernel runs eagerly (see
:func:`_eager_processor_class`). An outlines upgrade that renames that method breaks
here and nowhere else.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch
from pydantic import BaseModel

from .base import LLMError

# outlines_core's default lets the model put any run of whitespace between JSON tokens;
# small models then burn their token budget on newlines. Compact JSON costs nothing.
JSON_WHITESPACE = ""
_INDEX_CACHE_SIZE = 16


def json_processor(model: Any, output_type: type[BaseModel]) -> Any:
    """A fresh outlines logits processor for ``output_type``'s JSON schema.

    Building the token index for a schema costs ~1 s for a 12-id enum, so indexes are
    kept for the last few schemas (the same candidates asked about again).
    """
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    # Key order is kept: it is the order the model writes the fields in.
    schema = json.dumps(output_type.model_json_schema())
    with model.outlines_lock:
        index = model.outlines_indexes.get(schema)
        if index is None:
            try:
                regex = build_regex_from_schema(schema, JSON_WHITESPACE)
                index = Index(regex, _backend(model).vocabulary)
            except Exception as e:
                raise LLMError(f"outlines cannot compile {output_type.__name__}: {e}") from e
            model.outlines_indexes[schema] = index
            if len(model.outlines_indexes) > _INDEX_CACHE_SIZE:
                model.outlines_indexes.popitem(last=False)
        else:
            model.outlines_indexes.move_to_end(schema)
    return _eager_processor_class()(index, "torch")


def _backend(model: Any) -> Any:
    # The outlines vocabulary (every token as text) is built once per model.
    if model.outlines_backend is None:
        import outlines
        from outlines.backends.outlines_core import OutlinesCoreBackend

        model.outlines_backend = OutlinesCoreBackend(outlines.from_transformers(model.model, model.tokenizer))
    return model.outlines_backend


@functools.cache
def _eager_processor_class() -> type:
    """outlines' processor with its masking kernel run eagerly (outlines imported lazily).

    outlines_core wraps the kernel in ``torch.compile``; on a 2-core CPU the first call
    compiles C++ for ~45 s. Unpacking a 49k-token bitmask eagerly costs well under a
    millisecond per token, so the compile never pays off here.
    """
    from outlines.backends.outlines_core import OutlinesCoreLogitsProcessor
    from outlines_core.kernels.torch import fill_next_token_bitmask

    shifts = torch.arange(32, dtype=torch.int32)

    class EagerOutlinesProcessor(OutlinesCoreLogitsProcessor):  # type: ignore[misc]
        def _bias_logits_torch(self, batch_size: int, logits: Any) -> Any:  # outlines types it TensorType
            for i in range(batch_size):
                fill_next_token_bitmask(self._guides[i], self._bitmasks[i])
                bits = (self._bitmasks[i].unsqueeze(-1) >> shifts) & 1
                allowed = bits.bool().view(-1)[: logits.shape[1]].to(logits.device)
                logits[i].masked_fill_(~allowed, float("-inf"))
            return logits

    return EagerOutlinesProcessor
