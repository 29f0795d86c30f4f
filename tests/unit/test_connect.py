"""Which NATS connection errors are worth retrying (pure logic, no server)."""

from __future__ import annotations

import ssl

import nats.errors
import pytest

from writebus.client.connect import refused_for_good


def _ssl_error(reason: str) -> ssl.SSLError:
    err = ssl.SSLError(1, f"[SSL: {reason}] alert")
    err.reason = reason
    return err


def _verify_error() -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "unable to get local issuer certificate"
    return err


@pytest.mark.parametrize(
    ("exc", "hint"),
    [
        (nats.errors.Error("nats: 'Authorization Violation'"), "NATS_PASSWORD"),
        (nats.errors.AuthorizationError(), "NATS_CREDS"),
        (_verify_error(), "NATS_TLS_CA"),
        (_ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "NATS_TLS_CERT"),
    ],
)
def test_configuration_errors_are_final(exc: BaseException, hint: str) -> None:
    """Refused credentials and certificates cannot heal by retrying; the reason names the
    setting to check."""
    reason = refused_for_good(exc)
    assert reason is not None and hint in reason


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        BrokenPipeError(32, "Broken pipe"),
        TimeoutError(),
        nats.errors.StaleConnectionError(),
        _ssl_error("UNEXPECTED_EOF_WHILE_READING"),
    ],
)
def test_unreachable_server_is_retried(exc: BaseException) -> None:
    """A server that is down, starting or cut off may come back: keep trying."""
    assert refused_for_good(exc) is None
