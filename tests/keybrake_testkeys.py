"""Vault keys for tests that need a well-formed key the vault never issued.

Mirrors the format in core/src/vault_key.rs: `vk_` + 43 base62 characters +
a 6-character base62 CRC-32 of those 43.
"""
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def well_formed_unknown_key() -> str:
    body = _base62(int.from_bytes(secrets.token_bytes(32), "big"), 43)
    return f"vk_{body}{_base62(zlib.crc32(body.encode()), 6)}"
