"""Checks of settings read from the environment that need more than a type: names that end
up in NATS subjects, server URLs, and files that must exist. Each error is one
:class:`~writebus.client.errors.ConfigError` naming the variable -- never a traceback later,
after connecting -- and never quotes a URL's credentials."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from writebus.client.errors import ConfigError

#: A region is one NATS subject token; a prefix, one or more.
_TOKEN = r"[A-Za-z0-9_-]+"
_REGION = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*")
_PREFIX = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*")
_NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def check_region(value: str, variable: str) -> str:
    """``value`` if it can be a region: letters, digits, ``-`` and ``_``, with dots between
    them (it names NATS subjects, where a space or a wildcard would break them)."""
    if not _REGION.fullmatch(value):
        raise ConfigError(
            f"{variable}={value!r} is not a region name: use letters, digits, '-', '_' and "
            "dots between them",
            variable=variable,
        )
    return value


def is_region(value: str) -> bool:
    """Whether ``value`` can be a region (see :func:`check_region`)."""
    return _REGION.fullmatch(value) is not None


def region_variable(env: Mapping[str, str]) -> str:
    """Which variable names this process's region (``FLY_REGION`` wins over ``MY_REGION``)."""
    return "FLY_REGION" if env.get("FLY_REGION") else "MY_REGION"


def check_prefix(value: str) -> str:
    """``value`` if it can prefix NATS subjects: tokens of letters, digits, ``-`` and ``_``,
    joined by dots."""
    if not _PREFIX.fullmatch(value):
        raise ConfigError(
            f"WRITEBUS_PREFIX={value!r} is not a subject prefix: use letters, digits, '-', '_' "
            "and dots between them",
            variable="WRITEBUS_PREFIX",
        )
    return value


def check_nats_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    """``urls`` if each is a NATS server URL with a host and a valid port; the error names the
    server by its position, not its text (it may hold a password)."""
    for i, url in enumerate(urls, 1):
        try:
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            port = parts.port  # raises ValueError when out of range or not a number
            ok = parts.scheme in _NATS_SCHEMES and bool(parts.hostname) and port != 0
            after_host = parts.path + parts.query if parts.scheme in ("nats", "tls") else ""
            if "@" in after_host + parts.fragment:
                # nats://u:12#x@host: a password with / ? or # not percent-encoded ends the
                # host part there, and its start would be taken for the host and port. (A
                # ws:// URL has a path and query of its own, where '@' may be; no URL has
                # a fragment that means anything here.)
                raise ConfigError(
                    f"NATS_URL: server {i} of {len(urls)} has '@' after its host: "
                    "percent-encode / ? # in a user or password (%2F %3F %23)",
                    variable="NATS_URL",
                )
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(
                f"NATS_URL: server {i} of {len(urls)} is not a NATS URL "
                "(nats://[user:password@]host[:port], the port 1-65535)",
                variable="NATS_URL",
            )
    return urls


def check_files(env: Mapping[str, str], *names: str) -> None:
    """Each of ``names`` that is set names a readable file; a TLS key needs its certificate,
    and a certificate its key."""
    for name in names:
        path = env.get(name)
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise ConfigError(f"{name}={path!r}: no such readable file", variable=name)
    if bool(env.get("NATS_TLS_CERT")) != bool(env.get("NATS_TLS_KEY")):
        missing = "NATS_TLS_KEY" if env.get("NATS_TLS_CERT") else "NATS_TLS_CERT"
        raise ConfigError(
            f"{missing} is not set: a client certificate needs both NATS_TLS_CERT and NATS_TLS_KEY",
            variable=missing,
        )


def tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The NATS client's SSL context when ``ca`` or ``cert`` is given, else None: ``ca`` as PEM
    certificates, ``cert`` and ``key`` as a PEM certificate and its private key. Settings
    check it at start-up (one line naming the variable and OpenSSL's reason); connections
    use it."""
    if not (ca or cert):
        return None
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"NATS_TLS_CA={ca!r}: not PEM certificates ({_reason(exc)})", variable="NATS_TLS_CA"
        ) from None
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"NATS_TLS_CERT={cert!r} and NATS_TLS_KEY={key!r}: not a PEM certificate and "
                f"its private key ({_reason(exc)})",
                variable="NATS_TLS_CERT",
            ) from None
    return ctx


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
