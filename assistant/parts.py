"""What the facade's helpers use of :class:`~assistant.service.BundleAssistant`.

:mod:`assistant.grouping` and :mod:`assistant.merchandiser` are called by the service
with the service itself; typing that parameter with this Protocol instead of the class
keeps the arrows pointing one way (service -> helper), with no import back. The imports
below are for the type checker only: nothing here loads the index or the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from retrieval.candidates import CandidateRetriever
    from retrieval.config import Settings
    from retrieval.embeddings import Embedder
    from retrieval.index import Index

    from .compose import Composer, TypeCatalogue


class AssistantParts(Protocol):
    """The opened parts of one assistant: settings, index, retrieval, composition, model."""

    @property
    def settings(self) -> Settings: ...

    @property
    def index(self) -> Index: ...

    @property
    def embedder(self) -> Embedder: ...

    @property
    def retriever(self) -> CandidateRetriever: ...

    @property
    def types(self) -> TypeCatalogue: ...

    @property
    def composer(self) -> Composer: ...

    @property
    def llm(self) -> Any: ...  # a ChatModel, loaded on first use (a load failure raises here)
