"""DKIM signatures that a verifier accepts, covering the one-click unsubscribe headers."""

from __future__ import annotations

import base64
import email
import email.policy
import mailbox
import subprocess
from dataclasses import replace
from pathlib import Path

import dkim
import pytest

from publisher.config import Config
from publisher.errors import ConfigError
from publisher.pipeline import run_ingest, send_digest
from publisher.store import open_store
from subscribers import add_subscriber

from .conftest import NOW


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
    return key, base64.b64encode(public)


def test_every_delivered_message_carries_a_valid_signature(cfg: Config, keypair: tuple[Path, bytes]) -> None:
    key, public = keypair
    signed = replace(cfg, dkim_key_path=str(key), delivery=replace(cfg.delivery, dkim_selector="pub2026"))
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    add_subscriber(store, "a@example.com", NOW, confirmed=True)
    add_subscriber(store, "b@example.com", NOW, confirmed=True)
    assert send_digest(signed, store, NOW).sent == 2
    store.close()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"pub2026._domainkey.example.org."
        return b"v=DKIM1; k=rsa; p=" + public

    for raw in (m.as_bytes() for m in mailbox.Maildir(cfg.path(cfg.delivery.outbox_dir), create=False)):
        assert dkim.verify(raw, dnsfunc=dns)
        header = email.message_from_bytes(raw, policy=email.policy.default)["DKIM-Signature"]
        signed_headers = next(p.split("=", 1)[1] for p in header.replace(" ", "").split(";") if p.startswith("h="))
        assert {"list-unsubscribe", "list-unsubscribe-post", "from", "to", "message-id"} <= set(signed_headers.lower().split(":"))
        tampered = raw.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: nope")
        assert not dkim.verify(tampered, dnsfunc=dns)


def test_a_key_without_a_selector_is_a_clear_error(cfg: Config, keypair: tuple[Path, bytes]) -> None:
    from publisher.delivery.dkim import signer_for

    with pytest.raises(ConfigError, match="dkim_selector"):
        signer_for(replace(cfg, dkim_key_path=str(keypair[0])))
    with pytest.raises(ConfigError, match="PUBLISHER_DKIM_KEY_PATH"):
        signer_for(replace(cfg, dkim_key_path="/nonexistent/key.pem", delivery=replace(cfg.delivery, dkim_selector="s")))
