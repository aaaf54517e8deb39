"""Scope bypass: every request of the corpus (bypass_corpus.py) is sent to a
real stack — Envoy 1.40 with the wasm filter, the control service, the
recording Stripe stand-in — over raw HTTP/1.1 or HTTP/2 cleartext (prior
knowledge), and must get its verdict: forwarded as exactly the canonical
in-scope request, or refused with nothing sent upstream.

The last test reads the stand-in's whole log: every request that reached the
upstream is a `forward` case, in scope and canonical, carrying the real key
and nothing of the vault key; and there are exactly as many as forward cases.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

import httpx
import pytest

import bypass_corpus as corpus
from bypass_corpus import Case, Forward, Refuse
from rawwire import Reply, send_h1, send_h2
from support.stack import REAL_KEY, Stack

CASES = corpus.cases()
HOST = "127.0.0.1"
TIMEOUT = 10.0


@dataclass
class Gateway:
    stack: Stack
    keys: dict[str, str]  # corpus key name -> vault key secret
    other_key: str
    seen: int = 0  # upstream log entries accounted for
    sent: dict[str, Case] = field(default_factory=dict)
    # "Connection: close": the stand-in writes head and body separately, and on a
    # kept-alive connection Nagle plus delayed ACKs cost 40 ms a call.
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10, headers={"Connection": "close"}))

    # ---- placeholders

    def substitute(self, text: str, case: Case) -> str:
        vk = self.keys[case.key]
        values = {
            "VK_BASIC_NOCOLON": base64.b64encode(vk.encode()).decode(),
            "VK_BASIC_PWONLY": base64.b64encode(f":{vk}".encode()).decode(),
            "VK_BASIC_PW": base64.b64encode(f"{vk}:secret".encode()).decode(),
            "VK_BASIC": base64.b64encode(f"{vk}:".encode()).decode(),
            "VK_TYPO": vk[:10] + ("A" if vk[10] != "A" else "B") + vk[11:],
            "VK_PCT1": "%76" + vk[1:],
            "VK_PCT": "".join(f"%{b:02X}" for b in vk.encode()),
            "VK": vk,
            "OTHER_VK": self.other_key,
            "REAL": REAL_KEY,
            "PORT": str(self.stack.listen_port),
        }
        return re.sub(r"\$(" + "|".join(values) + ")", lambda m: values[m.group(1)], text)

    # ---- sending

    def send(self, case: Case) -> Reply:
        sub = lambda s: self.substitute(s, case)  # noqa: E731
        target = sub(case.target)
        body = sub(case.body.decode("latin-1")).encode("latin-1")
        headers = [(sub(k), sub(v)) for k, v in case.headers]
        if case.protocol == "h1":
            if not case.raw_headers:
                names = {k.lower().strip() for k, _ in headers}
                if "host" not in names:
                    headers.insert(0, ("Host", "gateway"))
                if body and not names & {"content-length", "transfer-encoding"}:
                    headers.append(("Content-Length", str(len(body))))
            headers.append((corpus.CASE_HEADER, case.id))
            return send_h1(HOST, self.stack.listen_port, case.method, target, headers, body, version=case.version,
                           timeout=TIMEOUT)
        if case.h2_block is not None:
            block = [(sub(k), sub(v)) for k, v in case.h2_block]
        else:
            block = [(":method", case.method), (":scheme", "http"), (":authority", "gateway"), (":path", target)]
            block += [(k.lower(), v) for k, v in headers]
        block.append((corpus.CASE_HEADER, case.id))
        return send_h2(HOST, self.stack.listen_port, block, body, timeout=TIMEOUT)

    # ---- the upstream's record

    def upstream_log(self) -> list[dict]:
        return self.http.get(f"{self.stack.upstream_url}/__standin/requests").json()

    def new_upstream_requests(self) -> list[dict]:
        """What reached the upstream since the last call."""
        count = self.http.get(f"{self.stack.upstream_url}/__standin/counts").json()["requests"]
        if count == self.seen:
            return []
        new = [r for r in self.upstream_log() if r["seq"] > self.seen]
        self.seen = count
        return new


def issue(stack: Stack, label: str, fields: dict) -> str:
    """A vault key with exactly these fields (no default cap)."""
    r = stack.admin("POST", "/admin/vault_keys", {"label": label, "vendor": "stripe", "expires_in_seconds": 3600,
                                                  **fields})
    assert r.status_code == 201, r.text
    return r.json()["vault_key"]


@pytest.fixture(scope="module")
def gateway(stack: Stack):
    keys = {name: issue(stack, f"bypass-{name}", fields) for name, fields in corpus.KEYS.items()}
    other = issue(stack, "bypass-other", corpus.KEYS["scoped"])
    gw = Gateway(stack, keys, other)
    gw.http.delete(f"{stack.upstream_url}/__standin/requests").raise_for_status()
    yield gw
    gw.http.close()


def upstream_target(record: dict) -> str:
    return record["path"] + (f"?{record['query']}" if record["query"] else "")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(gateway: Gateway, case: Case) -> None:
    gateway.new_upstream_requests()  # anything left over belongs to an earlier case (the log test catches it)
    gateway.sent[case.id] = case
    reply = gateway.send(case)
    arrived = gateway.new_upstream_requests()
    ours = [r for r in arrived if r["headers"].get(corpus.CASE_HEADER) == case.id]
    seen = [f"{r['method']} {upstream_target(r)}" for r in arrived]
    assert len(ours) == len(arrived), f"upstream received requests of other cases: {seen}"
    expect = case.expect
    if isinstance(expect, Forward):
        assert len(ours) == 1, f"{case.tries}: expected {expect}, got {reply.summary()}; upstream saw {seen}"
        got = f"{ours[0]['method']} {upstream_target(ours[0])}"
        assert got == f"{expect.method} {expect.target}", f"{case.tries}: forwarded as {got}, expected {expect}"
        assert reply.status == ours[0]["status"], f"the client did not get the upstream's answer: {reply.summary()}"
    else:
        assert not ours, f"{case.tries}: expected {expect} but the upstream received {seen}; client got {reply.summary()}"
        assert reply.status == expect.status, f"{case.tries}: expected {expect}, got {reply.summary()}"
        if expect.code is not None:
            assert reply.error_code() == expect.code, f"{case.tries}: expected {expect}, got {reply.summary()}"


# --------------------------------------------------------------------------
# What reached the upstream, all of it


def scope_matches(scope: str, method: str, path: str) -> bool:
    want_method, want_path = scope.split(" ", 1)
    want, got = want_path.split("/")[1:], path.split("/")[1:]
    return method == want_method and len(want) == len(got) and all(
        (w == "*" and g != "") or w == g for w, g in zip(want, got))


def test_the_corpus_covers_every_family_on_both_protocols() -> None:
    assert len(CASES) >= 200
    assert {c.protocol for c in CASES} == set(corpus.PROTOCOLS)
    assert all(n >= 3 for n in corpus.family_counts().values()), corpus.family_counts()


def test_nothing_out_of_scope_reached_the_upstream(gateway: Gateway) -> None:
    if not gateway.sent:  # run on its own (-k): send the corpus first
        for case in CASES:
            gateway.sent[case.id] = case
            gateway.send(case)
    log = gateway.upstream_log()
    problems = []
    for record in log:
        case_id = record["headers"].get(corpus.CASE_HEADER)
        case = gateway.sent.get(case_id)
        target = f"{record['method']} {upstream_target(record)}"
        if case is None:
            problems.append(f"{target}: no known case ({case_id!r})")
            continue
        path = record["path"]
        scopes = corpus.KEYS[case.key]["allowed_endpoints"]
        checks = {
            "is a forward case": isinstance(case.expect, Forward),
            "in the key's scope": any(scope_matches(s, record["method"], path) for s in scopes),
            "canonical path": path.startswith("/") and "//" not in path
            and not any(seg in (".", "..") for seg in path.split("/"))
            and not any(ch in path for ch in "%;\\#?"),
            "the real key": record["headers"].get("authorization") == f"Bearer {REAL_KEY}",
            "no vault key in the target": "vk_" not in unquote(unquote(upstream_target(record))),
            "no vault key in a header": not any("vk_" in v for k, v in record["headers"].items()
                                                if k != corpus.CASE_HEADER),
            "no method override": not any(h in record["headers"] for h in
                                          ("x-http-method-override", "x-http-method", "x-method-override")),
            "an allowed account": case.key != "acct"
            or record["headers"].get("stripe-account", "") in ("", *corpus.ACCOUNTS),
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            problems.append(f"{case_id}: {target} fails: {', '.join(failed)}")
    forwards = [c for c in gateway.sent.values() if isinstance(c.expect, Forward)]
    assert not problems, "\n".join(problems)
    assert len(log) == len(forwards), f"{len(log)} requests reached the upstream for {len(forwards)} forward cases"
