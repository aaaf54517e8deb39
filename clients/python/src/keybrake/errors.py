"""Exceptions raised by the Keybrake client."""
from __future__ import annotations

from typing import Any, Optional


class KeybrakeError(Exception):
    """The gateway refused an admin or audit call, or could not be reached.

    ``status`` is the HTTP status (``None`` when no answer came back); ``type``,
    ``code``, ``message`` and ``param`` are the fields of the gateway's error
    body, which has Stripe's shape: ``{"error": {"type", "code", "message",
    "param"}}``. ``should_retry`` is the gateway's ``Stripe-Should-Retry``
    header when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        type: Optional[str] = None,
        code: Optional[str] = None,
        param: Optional[str] = None,
        should_retry: Optional[bool] = None,
        body: Any = None,
    ) -> None:
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.should_retry = should_retry
        self.body = body
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(self.code)
        if self.param:
            parts.append(f"param {self.param}")
        head = " ".join(parts)
        return f"{head}: {self.message}" if head else self.message


class KeybrakeConnectionError(KeybrakeError):
    """The gateway could not be reached, or did not answer in time."""


class KeybrakeConfigError(KeybrakeError, ValueError):
    """The gateway address or the admin key is missing (neither passed nor in the environment)."""
