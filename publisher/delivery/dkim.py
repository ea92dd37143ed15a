"""Optional DKIM signing (dkimpy), per recipient: To, Message-ID and List-Unsubscribe differ for each.

On when PUBLISHER_DKIM_KEY_PATH names a PEM private key and [delivery].dkim_selector is set. The signed
headers include List-Unsubscribe and List-Unsubscribe-Post, which Gmail and Yahoo require for one-click
unsubscribe to count.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..config import Config
from ..errors import ConfigError

SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"list-id", b"list-unsubscribe",
                  b"list-unsubscribe-post", b"feedback-id", b"mime-version", b"content-type")


class Signer:
    def __init__(self, key: bytes, selector: str, domain: str) -> None:
        import dkim  # optional dependency: pip install "publisher[dkim]"

        self._dkim = dkim
        self._key = key
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")

    def __repr__(self) -> str:
        return f"Signer(selector={self.selector.decode()!r}, domain={self.domain.decode()!r})"

    def sign(self, message: bytes) -> bytes:
        """The DKIM-Signature header (with its CRLF) for this exact message."""
        return self._dkim.sign(message, self.selector, self.domain, self._key, include_headers=list(SIGNED_HEADERS), linesep=b"\r\n")


def signer_for(cfg: Config) -> Signer | None:
    path = cfg.dkim_key_path
    if not path:
        return None
    if not cfg.delivery.dkim_selector:
        raise ConfigError("PUBLISHER_DKIM_KEY_PATH is set but no selector: set [delivery].dkim_selector (the DNS name under _domainkey).",
                          key="delivery.dkim_selector")
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the DKIM key named by PUBLISHER_DKIM_KEY_PATH: {exc.strerror}.") from None
    if importlib.util.find_spec("dkim") is None:
        raise ConfigError('DKIM signing needs dkimpy: pip install "publisher[dkim]".')
    domain = cfg.delivery.dkim_domain or cfg.digest.from_address.rpartition("@")[2]
    return Signer(key, cfg.delivery.dkim_selector, domain)
