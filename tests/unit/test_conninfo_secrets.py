"""Finding a connection string's password in its forms, and masking it in messages."""

from __future__ import annotations

from writebus.client.conninfo_secrets import quotes_a_secret, scrub, secrets_of


def test_every_form_of_the_password_is_found() -> None:
    """As written and percent-decoded, in a URL (also one libpq refuses), its query string,
    or a keyword string; and each part around an unescaped '@'."""
    assert secrets_of("postgresql://app:s3cr%40t@db/app") == ["s3cr%40t", "s3cr@t"]
    assert "50%secret" in secrets_of("postgresql://app:50%secret@db/app")  # unparsable
    assert set(secrets_of("postgresql://app:pa@sst@db/app")) >= {"pa@sst", "pa", "sst"}
    assert secrets_of("postgresql://db/app?user=a&password=hunter22") == ["hunter22"]
    assert secrets_of("host=db password='se cret' user=x") == ["se cret"]
    assert secrets_of("host=db password=plain user=x") == ["plain"]
    assert secrets_of("postgresql://app@db/app") == []
    assert secrets_of("host=db user=x") == []


def test_scrub_masks_long_forms_anywhere_and_short_ones_standing_alone() -> None:
    """A short form is masked only where it stands alone: 'pa' of 'password' stays."""
    secrets = secrets_of("postgresql://app:pa@sst@db/app")
    text = "failed to resolve host 'sst@db': password pa rejected"
    assert scrub(text, secrets) == "failed to resolve host '***@db': password *** rejected"
    assert quotes_a_secret(text, secrets)
    assert not quotes_a_secret("connection refused", secrets)
    assert scrub('invalid token: "50%secret"', ["50%secret"]) == 'invalid token: "***"'


def test_a_password_with_an_unescaped_slash_or_space_is_masked() -> None:
    """libpq reads a URL password with an unescaped "/" as host, port and path, and an
    unquoted password with a space as two words, then quotes the pieces in its messages:
    every piece is masked (the whole password used to be printed, or its second word)."""
    url = "postgresql://app:Q7x+k/Zr9w@127.0.0.1:1/app"
    assert "Q7x+k/Zr9w" in secrets_of(url)
    assert scrub(f"cannot connect to postgres at {url[13:]}: port 'Q7x+k'", secrets_of(url)) == (
        "cannot connect to postgres at app:***@127.0.0.1:1/app: port '***'"
    )
    keyword = "host=h password=correct horse battery user=u"
    message = 'missing "=" after "horse" in connection info string'
    assert scrub(message, secrets_of(keyword)) == 'missing "=" after "***" in connection info string'
    assert "user=u" in scrub(keyword, secrets_of(keyword))
