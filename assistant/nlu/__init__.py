"""Need understanding: the lexicon (data), the parser (message -> :class:`Need`) and the
session state that refinements operate on."""

from .need import DIETS, Need

__all__ = ["DIETS", "Need"]
