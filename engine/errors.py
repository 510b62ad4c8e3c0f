"""The small exception hierarchy of mosaicflow.

Errors are raised deep inside and translated only at the edges: the CLI maps them to exit
codes, the server to ArcGIS error JSON. Every message says what is wrong, with which input
or parameter, and how to fix it.
"""

from __future__ import annotations


class MosaicflowError(Exception):
    """Base class of every error mosaicflow raises on purpose."""


class RequestError(MosaicflowError, ValueError):
    """A request that cannot be run: nothing has been written.

    Parameters
    ----------
    parameter:
        The request field at fault, spelt as in the request (``context.outSR``).
    value:
        The offending value, as given.
    problem:
        What is wrong with it.
    fix:
        How to correct it.
    """

    def __init__(self, parameter: str, value: object, problem: str, fix: str = "") -> None:
        self.parameter = parameter
        self.value = value
        self.problem = problem
        self.fix = fix
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        msg = f"{parameter}={shown}: {problem}"
        if fix:
            msg += f". {fix}"
        super().__init__(msg)


class ImageError(MosaicflowError):
    """One image cannot be ingested; the others go on.

    The message becomes the catalog row's ``message`` and a Warning on the job.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class StoreError(MosaicflowError):
    """The collection store is missing, damaged or incompatible with the request."""


class NothingIngested(MosaicflowError):
    """Every image of the request failed; the failures are listed in ``result``."""

    def __init__(self, message: str, result: object = None) -> None:
        self.result = result
        super().__init__(message)
