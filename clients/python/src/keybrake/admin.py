"""The gateway's admin API: issuing and revoking vault keys, and reading the audit log."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Dict, Iterable, List, Optional, Sequence, TypedDict, Union

import httpx

from .errors import KeybrakeConfigError, KeybrakeConnectionError, KeybrakeError

URL_ENV = "KEYBRAKE_URL"
ADMIN_KEY_ENV = "KEYBRAKE_ADMIN_KEY"

Usd = Union[int, str, Decimal, float]


class AuditRow(TypedDict, total=False):
    """One row of the gateway's audit log (``GET /admin/audit``)."""

    seq: int
    at: str
    call_id: str
    stage: str  # "intent" | "outcome" | "call"
    key_id: str
    label: str
    method: str
    path: str
    decision: str  # "allowed" | "denied" | "replayed" | "abandoned"
    reason: str
    upstream_status: Optional[int]
    amount: Optional[int]
    currency: Optional[str]
    usd: Optional[float]
    idempotency_key: Optional[str]
    forwarded_idempotency_key: Optional[str]
    object_id: Optional[str]
    request_id: Optional[str]
    fingerprint: str


@dataclass(frozen=True)
class VaultKey:
    """A vault key just issued. ``vault_key`` (``vk_...``) is the secret, shown
    only this once; ``id`` (``key_...``) names the key in revocations and in
    the audit log. ``info`` is the gateway's whole answer without the secret."""

    vault_key: str = field(repr=False)
    id: str
    label: str
    expires_at: Any
    info: Dict[str, Any] = field(repr=False, compare=False)

    def __str__(self) -> str:  # never print the secret by accident
        return f"VaultKey(id={self.id!r}, label={self.label!r})"


@dataclass(frozen=True)
class Revoked:
    """What ``revoke_prefix`` revoked."""

    revoked: int
    ids: List[str]


def _usd_text(value: Usd, name: str) -> str:
    """A USD amount as the plain decimal text the admin API takes ("32.99")."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number of dollars, not a bool")
    if isinstance(value, float):
        value = Decimal(repr(value))
    elif isinstance(value, (int, str)):
        value = Decimal(value)
    elif not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a number of dollars (int, Decimal, str or float)")
    if not value.is_finite():
        raise ValueError(f"{name} must be finite")
    return format(value, "f")


def resolve_url(url: Optional[str] = None) -> str:
    """The gateway's base address: ``url``, else ``$KEYBRAKE_URL``."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise KeybrakeConfigError(f"no gateway address: pass url= or set {URL_ENV} (e.g. http://127.0.0.1:10000)")
    return url.rstrip("/")


class Keybrake:
    """A client for the gateway's admin API.

    ``url`` and ``admin_key`` default to ``$KEYBRAKE_URL`` and
    ``$KEYBRAKE_ADMIN_KEY``. The admin key is needed to issue and revoke keys;
    reading the audit log also works with an audit-scoped vault key (see
    ``issue_audit_key``), so a job that only checks what already happened never
    holds the admin key.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        admin_key: Optional[str] = None,
        *,
        timeout: float = 10.0,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.url = resolve_url(url)
        self._admin_key = admin_key or os.environ.get(ADMIN_KEY_ENV)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"Keybrake(url={self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Keybrake":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------- plumbing ----------

    def _bearer(self, key: Optional[str]) -> str:
        key = key or self._admin_key
        if not key:
            raise KeybrakeConfigError(f"no admin key: pass admin_key= or set {ADMIN_KEY_ENV}")
        return key

    def _request(self, method: str, path: str, *, key: Optional[str] = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self._bearer(key)}"}
        try:
            response = self._http.request(method, path, headers=headers, **kw)
        except httpx.TimeoutException as e:
            raise KeybrakeConnectionError(f"no answer from the gateway at {self.url} in time: {e}") from e
        except httpx.TransportError as e:
            raise KeybrakeConnectionError(f"cannot reach the gateway at {self.url}: {e}") from e
        if response.is_success:
            return response.json()
        raise _error_from(response)

    # ---------- vault keys ----------

    def issue_vault_key(
        self,
        label: str,
        *,
        allowed_endpoints: Sequence[str] = ("POST /v1/charges",),
        daily_usd_cap: Optional[Usd] = None,
        expires_in_seconds: int = 3600,
        vendor: str = "stripe",
        max_amount_per_call_usd: Optional[Usd] = None,
        allow_unpriced_calls: Optional[bool] = None,
        dedup: Optional[str] = None,
        dedup_window_seconds: Optional[int] = None,
        allowed_accounts: Optional[Iterable[str]] = None,
    ) -> VaultKey:
        """Issues a vault key (``POST /admin/vault_keys``); the fields are the admin API's.

        ``label`` names the key for revoke-by-prefix and audit queries (use a
        prefix per job run: ``"ray-billing-2026-06-"``); ``daily_usd_cap`` is
        USD per UTC day (``None``: no cap); ``dedup`` is ``"content"`` (the
        default) or ``"idempotency_key"``. A refusal raises ``KeybrakeError``
        with the gateway's message (e.g. ``param allowed_endpoints: ...``).
        """
        body: Dict[str, Any] = {
            "label": label,
            "vendor": vendor,
            "allowed_endpoints": list(allowed_endpoints),
            "expires_in_seconds": expires_in_seconds,
        }
        if daily_usd_cap is not None:
            body["daily_usd_cap"] = _usd_text(daily_usd_cap, "daily_usd_cap")
        if max_amount_per_call_usd is not None:
            body["max_amount_per_call_usd"] = _usd_text(max_amount_per_call_usd, "max_amount_per_call_usd")
        if allow_unpriced_calls is not None:
            body["allow_unpriced_calls"] = allow_unpriced_calls
        if dedup is not None:
            body["dedup"] = dedup
        if dedup_window_seconds is not None:
            body["dedup_window_seconds"] = dedup_window_seconds
        if allowed_accounts is not None:
            body["allowed_accounts"] = list(allowed_accounts)
        answer = dict(self._request("POST", "/admin/vault_keys", json=body))
        secret = answer.pop("vault_key")
        return VaultKey(vault_key=secret, id=answer["id"], label=answer.get("label", label),
                        expires_at=answer.get("expires_at"), info=answer)

    def issue_audit_key(self, label: str, *, expires_in_seconds: int = 3600) -> VaultKey:
        """Issues an audit-scoped key: it may call ``GET /admin/audit`` and nothing else."""
        return self.issue_vault_key(label, vendor="keybrake", allowed_endpoints=["GET /admin/audit"],
                                    expires_in_seconds=expires_in_seconds)

    def revoke(self, key_id: str) -> Dict[str, Any]:
        """Revokes one key at once (``DELETE /admin/vault_keys/{id}``); returns its view."""
        if not key_id or "/" in key_id:
            raise ValueError(f"not a vault key id: {key_id!r}")
        view: Dict[str, Any] = self._request("DELETE", f"/admin/vault_keys/{key_id}")
        return view

    def revoke_prefix(self, label_prefix: str) -> Revoked:
        """The kill switch: revokes every active key whose label starts with ``label_prefix``."""
        if not label_prefix:
            raise ValueError("revoke_prefix needs a non-empty label prefix (it would revoke every key)")
        answer = self._request("POST", "/admin/vault_keys/revoke", json={"label_prefix": label_prefix})
        return Revoked(revoked=answer["revoked"], ids=list(answer["ids"]))

    # ---------- audit ----------

    def audit(
        self,
        *,
        key: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        key_id: Optional[str] = None,
        label_prefix: Optional[str] = None,
        decision: Optional[str] = None,
        object_id: Optional[str] = None,
        fingerprint: Optional[str] = None,
        call_id: Optional[str] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
        order: str = "asc",
        limit: int = 1000,
        page_size: int = 1000,
    ) -> List[AuditRow]:
        """Rows of the audit log matching every filter given, following pages
        until ``limit`` rows (oldest first unless ``order="desc"``), ``page_size``
        rows per request.

        ``key`` is the bearer to use: an audit-scoped vault key, or (default)
        the admin key.
        """
        if limit < 1 or not 1 <= page_size <= 1000:
            raise ValueError("limit must be at least 1 and page_size from 1 to 1000")
        filters = {
            "idempotency_key": idempotency_key, "key_id": key_id, "label_prefix": label_prefix,
            "decision": decision, "object_id": object_id, "fingerprint": fingerprint, "call_id": call_id,
            "since": since, "until": until,
        }
        params: Dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
        params["order"] = order
        rows: List[AuditRow] = []
        cursor: Optional[str] = None
        while len(rows) < limit:
            page_params = {**params, "limit": min(page_size, limit - len(rows))}
            if cursor is not None:
                page_params["starting_after"] = cursor
            page = self._request("GET", "/admin/audit", key=key, params=page_params)
            rows.extend(page["data"])
            cursor = page.get("next_cursor")
            if not page.get("has_more") or cursor is None:
                break
        return rows

    def already_done(self, idempotency_key: str, *, key: Optional[str] = None,
                     path: Optional[str] = "/v1/charges") -> Optional[AuditRow]:
        """The pre-flight check: the audit row showing that a call sent with
        this caller ``Idempotency-Key`` already succeeded upstream (a 2xx
        outcome, or a 2xx replay), or ``None``.

        A job that is re-executed with no memory of its last run (a resumed
        Ray Workflow step, a re-triggered Kestra subflow) can ask this with an
        audit-scoped ``key`` before calling Stripe, and skip the call.

        ``None`` is not proof that nothing happened: a call still in flight has
        no outcome yet. Make the call through the gateway anyway, with the same
        idempotency key: the gateway answers a duplicate of an in-flight call
        with 409 and of a finished one with the stored response.
        """
        for row in self.audit(key=key, idempotency_key=idempotency_key):
            status = row.get("upstream_status")
            if path is not None and row.get("path") != path:
                continue
            if status is None or not 200 <= status < 300:
                continue
            if (row.get("stage"), row.get("decision")) in (("outcome", "allowed"), ("call", "replayed")):
                return row
        return None


def _error_from(response: httpx.Response) -> KeybrakeError:
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        pass
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or response.reason_phrase
        kind, code, param = error.get("type"), error.get("code"), error.get("param")
    else:
        message = (response.text or response.reason_phrase or "no body").strip()[:500]
        kind = code = param = None
    retry_header = response.headers.get("stripe-should-retry")
    should_retry = None if retry_header is None else retry_header == "true"
    return KeybrakeError(message, status=response.status_code, type=kind, code=code, param=param,
                         should_retry=should_retry, body=body)


# ---------- module-level shortcuts (a client per call; the address and key from arguments or the environment) ----------


def issue_vault_key(label: str, *, url: Optional[str] = None, admin_key: Optional[str] = None,
                    **fields: Any) -> VaultKey:
    """``Keybrake(url, admin_key).issue_vault_key(label, **fields)``."""
    with Keybrake(url, admin_key) as kb:
        return kb.issue_vault_key(label, **fields)


def issue_audit_key(label: str, *, url: Optional[str] = None, admin_key: Optional[str] = None,
                    expires_in_seconds: int = 3600) -> VaultKey:
    """``Keybrake(url, admin_key).issue_audit_key(label, ...)``."""
    with Keybrake(url, admin_key) as kb:
        return kb.issue_audit_key(label, expires_in_seconds=expires_in_seconds)


def revoke(key_id: str, *, url: Optional[str] = None, admin_key: Optional[str] = None) -> Dict[str, Any]:
    """``Keybrake(url, admin_key).revoke(key_id)``."""
    with Keybrake(url, admin_key) as kb:
        return kb.revoke(key_id)


def revoke_prefix(label_prefix: str, *, url: Optional[str] = None, admin_key: Optional[str] = None) -> Revoked:
    """``Keybrake(url, admin_key).revoke_prefix(label_prefix)``."""
    with Keybrake(url, admin_key) as kb:
        return kb.revoke_prefix(label_prefix)


def audit(*, url: Optional[str] = None, key: Optional[str] = None, admin_key: Optional[str] = None,
          **filters: Any) -> List[AuditRow]:
    """The audit log, read with ``key`` (an audit-scoped vault key) or else the admin key."""
    with Keybrake(url, admin_key) as kb:
        return kb.audit(key=key, **filters)


def already_done(idempotency_key: str, *, url: Optional[str] = None, key: Optional[str] = None,
                 admin_key: Optional[str] = None, path: Optional[str] = "/v1/charges") -> Optional[AuditRow]:
    """``Keybrake(url, admin_key).already_done(idempotency_key, key=key)``: the pre-flight check."""
    with Keybrake(url, admin_key) as kb:
        return kb.already_done(idempotency_key, key=key, path=path)

