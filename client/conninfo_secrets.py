"""Keeping a connection string's password out of the messages made from it.

libpq quotes what it cannot parse -- ``invalid percent-encoded token: "50%secret"`` -- and a
password with an unescaped ``@`` turns its tail into the host name (``sst@db``), which then
appears in every message about the host. :func:`scrub` takes each form of the password out of a
text; :func:`secrets_of` finds those forms, also in a string libpq refuses.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

#: What a password is replaced with.
MASK = "***"
#: Shorter forms are taken out only where they stand alone (``pa`` of ``password`` stays).
_SHORT = 4
_URL_USERINFO = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)@")
_URL_QUERY = re.compile(r"[?&]password=([^&#]*)")
_KEYWORD = re.compile(r"\bpassword\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))")


def secrets_of(conninfo: str) -> list[str]:
    """Every form of ``conninfo``'s password that a message could quote, longest first: as
    written, percent-decoded, and each part around an unescaped ``@``."""
    found: set[str] = set()
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        found.add(str(password))
    url = _URL_USERINFO.match(conninfo)
    if url and ":" in url.group(1):
        written = url.group(1).split(":", 1)[1]
        found.add(written)
        found.update(written.split("@"))
    found.update(m.group(1) for m in _URL_QUERY.finditer(conninfo))
    found.update(m.group(1) or m.group(2) for m in _KEYWORD.finditer(conninfo))
    found |= {unquote(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` replaced by :data:`MASK`."""
    for secret in secrets:
        if len(secret) >= _SHORT:
            text = text.replace(secret, MASK)
        else:
            alone = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
            text = re.sub(alone, MASK, text)
    return text


def quotes_a_secret(text: str, secrets: list[str]) -> bool:
    """Whether ``text`` holds any of ``secrets`` (by :func:`scrub`'s rules)."""
    return scrub(text, secrets) != text
