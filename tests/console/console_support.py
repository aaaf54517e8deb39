"""Helpers of the console tests: a logged-in console session over httpx."""
from __future__ import annotations

import re

import httpx

from support.stack import ADMIN_KEY


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


def login(base_url: str, **kw) -> httpx.Client:
    """A client holding a console session (the cookie jar keeps it)."""
    client = httpx.Client(base_url=base_url, follow_redirects=False, timeout=30, **kw)
    r = client.post("/admin/ui/login", data={"admin_key": ADMIN_KEY})
    assert r.status_code == 303 and r.headers["location"] == "/admin/ui/keys", r.text
    return client
