"""The small exception hierarchy of mosaicflow.

Errors are raised deep inside and translated only at the edges: the CLI maps them to exit
codes, the server to ArcGIS error JSON. Every message says what is wrong, with which input
or parameter, and how to fix it.
"""

from __future__ import annotations

import re


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

    def __reduce__(self) -> tuple[object, ...]:  # pickles whole, e.g. back from a worker
        return (type(self), (self.parameter, self.value, self.problem, self.fix))


class ImageError(MosaicflowError):
    """One image cannot be ingested; the others go on.

    The message becomes the catalog row's ``message`` and a Warning on the job.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:  # pickles whole, e.g. back from a worker
        return (type(self), (self.source, self.reason))


class StoreError(MosaicflowError):
    """The collection store is missing, damaged or incompatible with the request."""


class NothingIngested(MosaicflowError):
    """Every image of the request failed; the failures are listed in ``result``."""

    def __init__(self, message: str, result: object = None) -> None:
        self.result = result
        super().__init__(message)


def remote_read_reason(text: str) -> str | None:
    """Why an object store or web server refused a read (GDAL's message ``text``), with
    the fix; None when ``text`` is not such a refusal. Used when probing and by chunk reads."""
    low = text.lower()
    code = re.search(r"(?:http (?:response )?code|http error)[: ]+(\d{3})", low)
    status = int(code.group(1)) if code else None
    if status == 404 or "does not exist" in low or "nosuchkey" in low or "not found" in low:
        return f"object not found ({text}); check the uri (bucket, key or url)"
    if status in (401, 403) or "access denied" in low or "accessdenied" in low:
        return (
            f"access denied ({text}); check the credentials (AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...)"
        )
    if status is not None and status >= 500:
        return f"the server failed with HTTP {status} after GDAL's retries ({text}); retry later"
    return None
