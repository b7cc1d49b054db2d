"""The service's request errors, in a module of their own so that the facade's helpers
(:mod:`assistant.grouping`, :mod:`assistant.merchandiser`) can raise them without
importing :mod:`assistant.service`, which imports them (no import cycle).
:mod:`assistant.service` re-exports every name here."""

from __future__ import annotations


class ServiceError(ValueError):
    """A bad request: the message is meant for the person who made it."""


class UnknownUser(ServiceError):
    pass


class UnknownProduct(ServiceError):
    pass
