"""Issue 16, point 5: `publisher doctor` names each thing wrong with a sending setup before the first send, and the DNS
records to publish. One test per misconfiguration, each through the real command (the venv's `publisher` script) on a
config.toml written here; --network against a real DNS server on a free local UDP port (never the internet).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .conftest import REPO, TEST_SECRET_KEY
from .test_delivery_faults import PUBLISHER, env_for

DOMAIN = "sample-institute.org"
SELECTOR = "news2026"
SMTP_PASSWORD = "relay-password-never-printed"
# Everything right: the config a careful operator writes for an SMTP relay, DKIM on.
GOOD: dict[str, dict[str, object]] = {
    "site": {"base_url": f"https://www.{DOMAIN}", "postal_address": "12 Harbour Road, Portsmouth, NH 03801, USA"},
    "digest": {"from_address": f"digest@{DOMAIN}"},
    "delivery": {"backend": "smtp", "envelope_from": f"bounces@news.{DOMAIN}", "dkim_selector": SELECTOR},
    "delivery.smtp": {"host": "smtp.relay-provider.net", "port": 587, "security": "starttls", "username": "publisher"},
}


# -- keys, config, the command -------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, bytes]:
    """A 2048-bit RSA key as PEM (mode 600), its DKIM p= (base64 SubjectPublicKeyInfo), and its PEM bytes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, base64.b64encode(public).decode("ascii"), pem


def write_config(folder: Path, config: dict[str, dict[str, object]]) -> None:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]  # JSON's strings, numbers, booleans are TOML's
    (folder / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def changed(**sections: dict[str, object]) -> dict[str, dict[str, object]]:
    """GOOD with some keys replaced: changed(site={"base_url": ...}); a value None removes the key."""
    config = {name: dict(values) for name, values in GOOD.items()}
    for name, values in sections.items():
        section = config.setdefault(name.replace("__", "."), {})
        for key, value in values.items():
            if value is None:
                section.pop(key, None)
            else:
                section[key] = value
    return config


def doctor(folder: Path, config: dict[str, dict[str, object]], *args: str, key: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    write_config(folder, config)
    extra = {"PUBLISHER_SMTP_PASSWORD": SMTP_PASSWORD} | ({"PUBLISHER_DKIM_KEY_PATH": str(key)} if key else {})
    return subprocess.run([*PUBLISHER, "doctor", *args], cwd=folder, env=env or env_for(**extra), capture_output=True, text=True,
                          timeout=120)


def lines(proc: subprocess.CompletedProcess[str], level: str, check: str) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith(f"{level}: {check}: ")]


def one(proc: subprocess.CompletedProcess[str], level: str, check: str, *words: str) -> str:
    """The one line of this level for this check, holding every word; the whole output in the assertion's message."""
    found = lines(proc, level, check)
    assert len(found) == 1, f"expected one '{level}: {check}:' line, exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    for word in words:
        assert word in found[0], (word, found[0])
    return found[0]


def only_error(proc: subprocess.CompletedProcess[str], check: str, *words: str) -> str:
    """Exit 1, and this check's error is the only error."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, "\n".join(errors)
    return one(proc, "error", check, *words)


# -- a correct setup -----------------------------------------------------------------------------

def test_a_correct_setup_passes_and_prints_the_dkim_record_without_a_secret(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    path, public, pem = rsa_key
    proc = doctor(tmp_path, GOOD, key=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith(("error:", "warning:"))], proc.stdout
    for check in ("backend", "alignment", "dkim", "unsubscribe", "postal-address", "smtp-tls", "secret-key"):
        one(proc, "ok", check)
    one(proc, "ok", "alignment", DOMAIN, f"news.{DOMAIN}")
    one(proc, "ok", "unsubscribe", f"https://www.{DOMAIN}/unsubscribe/<token>", "List-Unsubscribe=One-Click")
    assert proc.stdout.splitlines()[-1].startswith("summary: no errors or warnings")
    # The record, ready to publish: the value in strings of at most 255 characters, the public key whole.
    record = next(line.strip() for line in proc.stdout.splitlines() if line.strip().startswith(f"{SELECTOR}._domainkey.{DOMAIN} TXT "))
    strings = re.findall(r'"([^"]*)"', record)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings) and len(strings[0]) == 255
    assert "".join(strings) == f"v=DKIM1; k=rsa; p={public}"
    # No secret anywhere: not the signing key, not the SMTP password, not a line of the private key.
    output = proc.stdout + proc.stderr
    body = [line for line in pem.decode("ascii").splitlines() if not line.startswith("-----")]
    assert TEST_SECRET_KEY not in output and SMTP_PASSWORD not in output
    assert not [line for line in body if line in output]


def test_the_shipped_sample_config_fails_on_each_sample_value(tmp_path: Path) -> None:
    shutil.copy(REPO / "config.toml", tmp_path / "config.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    proc = subprocess.run([*PUBLISHER, "doctor"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    one(proc, "error", "alignment", "[digest].from_address", "digest@example.org", "reserved")
    one(proc, "error", "unsubscribe", "[site].base_url", "http://127.0.0.1:8000", "https")
    one(proc, "error", "postal-address", "1 Example Square")
    one(proc, "error", "secret-key", "PUBLISHER_SECRET_KEY", "var/secret_key")
    one(proc, "warning", "dkim", "PUBLISHER_DKIM_KEY_PATH", "dkim_selector")
    assert lines(proc, "warning", "backend")  # outbox, and the sample subscribers
    dev_key = (tmp_path / "var" / "secret_key").read_text(encoding="ascii").strip()
    assert dev_key not in proc.stdout + proc.stderr


# -- 1. DMARC alignment --------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["digest@example.org", "news@mail.example.com", "digest@localhost"])
def test_a_sample_from_domain_is_an_error(tmp_path: Path, rsa_key: tuple[Path, str, bytes], address: str) -> None:
    proc = doctor(tmp_path, changed(digest={"from_address": address}, delivery={"envelope_from": None}), key=rsa_key[0])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    one(proc, "error", "alignment", "[digest].from_address", address, "a domain you own")


def test_a_dkim_domain_outside_the_from_domain_is_an_error(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    proc = doctor(tmp_path, changed(delivery={"dkim_domain": "mailer-host.net"}), key=rsa_key[0])
    only_error(proc, "alignment", "[delivery].dkim_domain", "mailer-host.net", DOMAIN)


def test_two_names_under_a_countrys_second_level_are_not_one_organisation(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    """harbour-press.co.uk and other-press.co.uk share only co.uk: a DKIM signature of the one does not align with
    mail from the other (the last two labels alone would have said it does)."""
    config = changed(digest={"from_address": "digest@harbour-press.co.uk"}, delivery={"envelope_from": "bounces@harbour-press.co.uk",
                                                                                     "dkim_domain": "other-press.co.uk"})
    only_error(doctor(tmp_path, config, key=rsa_key[0]), "alignment", "[delivery].dkim_domain", "other-press.co.uk")


def test_an_envelope_sender_elsewhere_is_a_warning_with_dkim_and_an_error_without(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    elsewhere = changed(delivery={"envelope_from": "bounce@relay-provider.net"})
    proc = doctor(tmp_path, elsewhere, key=rsa_key[0])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one(proc, "warning", "alignment", "[delivery].envelope_from", "relay-provider.net", "DKIM")
    proc = doctor(tmp_path, changed(delivery={"envelope_from": "bounce@relay-provider.net", "dkim_selector": None}))
    only_error(proc, "alignment", "[delivery].envelope_from", "relay-provider.net")


# -- 2. DKIM -------------------------------------------------------------------------------------

def test_no_dkim_is_a_warning(tmp_path: Path) -> None:
    proc = doctor(tmp_path, changed(delivery={"dkim_selector": None}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one(proc, "warning", "dkim", "PUBLISHER_DKIM_KEY_PATH", "[delivery].dkim_selector", "Gmail", "openssl genrsa")
    assert "summary: 1 warning" in proc.stdout


def test_an_unreadable_dkim_key_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "dkim.pem"
    proc = doctor(tmp_path, GOOD, key=missing)
    only_error(proc, "dkim", "PUBLISHER_DKIM_KEY_PATH", str(missing), "cannot be read")


def test_a_file_that_is_no_private_key_is_an_error(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    garbage = tmp_path / "dkim.pem"
    garbage.write_text("not a key\n", encoding="ascii")
    only_error(doctor(tmp_path, GOOD, key=garbage), "dkim", str(garbage), "is not a PEM private key")
    public_only = tmp_path / "public.pem"
    public_only.write_text(f"-----BEGIN PUBLIC KEY-----\n{rsa_key[1]}\n-----END PUBLIC KEY-----\n", encoding="ascii")
    only_error(doctor(tmp_path, GOOD, key=public_only), "dkim", "a public key; it must be the private one")


def test_an_ed25519_key_is_an_error_since_the_signer_is_rsa(tmp_path: Path) -> None:
    path = tmp_path / "ed25519.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                       serialization.NoEncryption()))
    only_error(doctor(tmp_path, GOOD, key=path), "dkim", "ed25519", "rsa-sha256", "openssl genrsa")


def test_a_key_without_a_selector_and_a_selector_without_a_key_are_errors(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    only_error(doctor(tmp_path, changed(delivery={"dkim_selector": None}), key=rsa_key[0]), "dkim", "[delivery].dkim_selector is empty")
    only_error(doctor(tmp_path, GOOD), "dkim", f"[delivery].dkim_selector = '{SELECTOR}'", "PUBLISHER_DKIM_KEY_PATH is not set")


# -- 3. one-click unsubscribe --------------------------------------------------------------------

def test_an_http_base_url_is_an_error(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    proc = doctor(tmp_path, changed(site={"base_url": f"http://www.{DOMAIN}"}), key=rsa_key[0])
    only_error(proc, "unsubscribe", "[site].base_url", f"http://www.{DOMAIN}", f"(http://www.{DOMAIN}/unsubscribe/<token>)", "https")


def test_the_local_default_base_url_is_an_error_even_with_a_local_relay(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    # A relay on this machine passes `load_config` (links are read here), but it is no setup for real readers.
    config = changed(site={"base_url": None}, delivery__smtp={"host": "127.0.0.1"})
    proc = doctor(tmp_path, config, key=rsa_key[0])
    only_error(proc, "unsubscribe", "[site].base_url", "http://127.0.0.1:8000")


# -- 4. postal address ---------------------------------------------------------------------------

@pytest.mark.parametrize("address", [None, "", "   "])
def test_the_sample_or_an_empty_postal_address_is_an_error(tmp_path: Path, rsa_key: tuple[Path, str, bytes], address: str | None) -> None:
    proc = doctor(tmp_path, changed(site={"postal_address": address}), key=rsa_key[0])  # None: the default, the sample's
    only_error(proc, "postal-address", "[site].postal_address", "CAN-SPAM", *(["1 Example Square"] if address is None else ["empty"]))


# -- 5. SMTP TLS ---------------------------------------------------------------------------------

def test_smtp_without_tls_is_an_error(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    proc = doctor(tmp_path, changed(delivery__smtp={"security": "none", "username": None}), key=rsa_key[0])
    only_error(proc, "smtp-tls", "[delivery.smtp].security = 'none'", "smtp.relay-provider.net", "starttls")


def test_allow_plaintext_auth_is_an_error(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    proc = doctor(tmp_path, changed(delivery__smtp={"allow_plaintext_auth": True}), key=rsa_key[0])
    only_error(proc, "smtp-tls", "[delivery.smtp].allow_plaintext_auth = true")


# -- 6. the signing key --------------------------------------------------------------------------

def test_the_development_signing_key_is_an_error(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    env = {k: v for k, v in env_for(PUBLISHER_SMTP_PASSWORD=SMTP_PASSWORD, PUBLISHER_DKIM_KEY_PATH=str(rsa_key[0])).items()
           if k != "PUBLISHER_SECRET_KEY"}
    proc = doctor(tmp_path, GOOD, env=env)
    only_error(proc, "secret-key", "PUBLISHER_SECRET_KEY is not set", str(tmp_path / "var" / "secret_key"), "token_urlsafe")
    dev_key = (tmp_path / "var" / "secret_key").read_text(encoding="ascii").strip()
    assert dev_key not in proc.stdout + proc.stderr


def test_the_development_keys_value_set_in_the_environment_is_ok(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    # Moving to production without breaking the links already sent: PUBLISHER_SECRET_KEY set to var/secret_key's value.
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret_key").write_text(TEST_SECRET_KEY + "\n", encoding="ascii")
    proc = doctor(tmp_path, GOOD, key=rsa_key[0])  # PUBLISHER_SECRET_KEY = TEST_SECRET_KEY
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one(proc, "ok", "secret-key", "PUBLISHER_SECRET_KEY is set")
    assert TEST_SECRET_KEY not in proc.stdout + proc.stderr


# -- 7. --network: a real DNS server on this machine ---------------------------------------------

class TxtServer:
    """A tiny authoritative DNS server over UDP on 127.0.0.1: TXT records from a dict, NXDOMAIN for any other name."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.asked: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            for question in query.question:
                name = question.name.to_text().rstrip(".").lower()
                self.asked.append(name)
                values = self.records.get(name)
                if values is None:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                elif question.rdtype == dns.rdatatype.TXT and values:
                    texts = [" ".join(json.dumps(v[i:i + 255]) for i in range(0, len(v), 255)) for v in values]
                    response.answer.append(dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, dns.rdatatype.TXT, texts))
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def dns_server() -> Iterator[TxtServer]:
    server = TxtServer({})
    yield server
    server.close()


def published(public: str) -> dict[str, list[str]]:
    """The records a correct setup has: SPF on the envelope domain, DKIM at the selector, DMARC on the From domain."""
    return {f"news.{DOMAIN}": ["v=spf1 include:spf.relay-provider.net -all"],
            f"{SELECTOR}._domainkey.{DOMAIN}": [f"v=DKIM1; k=rsa; p={public}"],
            f"_dmarc.{DOMAIN}": [f"v=DMARC1; p=quarantine; rua=mailto:dmarc@{DOMAIN}"],
            DOMAIN: ["google-site-verification=abc123"]}


def test_network_with_every_record_right_passes(tmp_path: Path, rsa_key: tuple[Path, str, bytes], dns_server: TxtServer) -> None:
    dns_server.records.update(published(rsa_key[1]))
    proc = doctor(tmp_path, GOOD, "--network", "--nameserver", dns_server.address, key=rsa_key[0])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one(proc, "ok", "dns-spf", f"news.{DOMAIN}", "v=spf1 include:spf.relay-provider.net -all")
    one(proc, "ok", "dns-dkim", f"{SELECTOR}._domainkey.{DOMAIN}")
    one(proc, "ok", "dns-dmarc", f"_dmarc.{DOMAIN}", "quarantine")
    assert {f"news.{DOMAIN}", f"{SELECTOR}._domainkey.{DOMAIN}", f"_dmarc.{DOMAIN}"} <= set(dns_server.asked)
    assert "DNS was not looked at" not in proc.stdout


def test_network_finds_spf_missing_dkim_mismatched_and_dmarc_missing(tmp_path: Path, rsa_key: tuple[Path, str, bytes],
                                                                      dns_server: TxtServer) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    stale = base64.b64encode(other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    dns_server.records.update({f"news.{DOMAIN}": ["some-other=record"],  # a TXT record, but no SPF
                               f"{SELECTOR}._domainkey.{DOMAIN}": [f"v=DKIM1; k=rsa; p={stale}"]})
    proc = doctor(tmp_path, GOOD, "--nameserver", dns_server.address, key=rsa_key[0])  # --nameserver implies --network
    assert proc.returncode == 1, proc.stdout + proc.stderr
    one(proc, "error", "dns-spf", f"no SPF record at news.{DOMAIN}", "[delivery].envelope_from", "smtp.relay-provider.net")
    assert f'news.{DOMAIN} TXT "v=spf1 include:' in proc.stdout
    one(proc, "error", "dns-dkim", "different key", "PUBLISHER_DKIM_KEY_PATH")
    one(proc, "error", "dns-dmarc", f"no DMARC record at _dmarc.{DOMAIN}", "Gmail")
    # Each error says what to publish: the DKIM record with our key, a DMARC record to start with.
    assert f'"v=DKIM1; k=rsa; p={rsa_key[1][:200]}' in proc.stdout
    assert f'_dmarc.{DOMAIN} TXT "v=DMARC1; p=none;' in proc.stdout


def test_network_reports_dmarc_p_none_as_a_warning(tmp_path: Path, rsa_key: tuple[Path, str, bytes], dns_server: TxtServer) -> None:
    dns_server.records.update(published(rsa_key[1]) | {f"_dmarc.{DOMAIN}": [f"v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}"]})
    proc = doctor(tmp_path, GOOD, "--network", "--nameserver", dns_server.address, key=rsa_key[0])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one(proc, "warning", "dns-dmarc", "p=none", "p=quarantine")


def spaced(p: str) -> str:
    """p= as some DNS tools show and operators paste it: in pieces with spaces between."""
    return " ".join(p[i:i + 64] for i in range(0, len(p), 64))


def pkcs1(public_key: rsa.RSAPublicKey) -> str:
    """The key as a bare PKCS#1 RSAPublicKey, base64 DER (`openssl rsa -RSAPublicKey_out`), not SubjectPublicKeyInfo."""
    return base64.b64encode(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)).decode("ascii")


@pytest.mark.parametrize("encoding", ["spki", "pkcs1"])
def test_network_takes_our_key_in_either_encoding_and_split(tmp_path: Path, rsa_key: tuple[Path, str, bytes], dns_server: TxtServer,
                                                           encoding: str) -> None:
    path, public, pem = rsa_key
    ours = serialization.load_pem_private_key(pem, password=None).public_key()
    assert isinstance(ours, rsa.RSAPublicKey)
    p = public if encoding == "spki" else pkcs1(ours)
    dns_server.records.update(published(public) | {f"{SELECTOR}._domainkey.{DOMAIN}": [f"v=DKIM1; k=rsa; p={spaced(p)}"]})
    proc = doctor(tmp_path, GOOD, "--network", "--nameserver", dns_server.address, key=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one(proc, "ok", "dns-dkim", f"{SELECTOR}._domainkey.{DOMAIN}", "PUBLISHER_DKIM_KEY_PATH")


@pytest.mark.parametrize("encoding", ["spki", "pkcs1", "garbage"])
def test_network_a_really_different_key_is_an_error_in_either_encoding(tmp_path: Path, rsa_key: tuple[Path, str, bytes],
                                                                       dns_server: TxtServer, encoding: str) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    p = {"spki": base64.b64encode(other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode(),
         "pkcs1": pkcs1(other), "garbage": "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"}[encoding]
    dns_server.records.update(published(rsa_key[1]) | {f"{SELECTOR}._domainkey.{DOMAIN}": [f"v=DKIM1; k=rsa; p={spaced(p)}"]})
    proc = doctor(tmp_path, GOOD, "--network", "--nameserver", dns_server.address, key=rsa_key[0])
    only_error(proc, "dns-dkim", f"{SELECTOR}._domainkey.{DOMAIN}",
               "not an RSA public key" if encoding == "garbage" else "different key")
    assert f'"v=DKIM1; k=rsa; p={rsa_key[1][:200]}' in proc.stdout  # the record to publish instead


def from_at(domain: str) -> dict[str, dict[str, object]]:
    """GOOD with From and the envelope sender at ``domain`` (DKIM then signs as it too)."""
    return changed(digest={"from_address": f"news@{domain}"}, delivery={"envelope_from": f"bounces@{domain}"})


def records_for(domain: str, public: str) -> dict[str, list[str]]:
    """SPF and DKIM right for a From domain, no DMARC record."""
    return {domain: ["v=spf1 include:spf.relay-provider.net -all"], f"{SELECTOR}._domainkey.{domain}": [f"v=DKIM1; k=rsa; p={public}"]}


def dmarc_asked(server: TxtServer) -> list[str]:
    return list(dict.fromkeys(name for name in server.asked if name.startswith("_dmarc.")))  # a UDP retry asks twice


def test_network_finds_dmarc_at_the_registered_domain_under_a_two_label_suffix(tmp_path: Path, rsa_key: tuple[Path, str, bytes],
                                                                               dns_server: TxtServer) -> None:
    # mail.harbour-press.co.uk: its record is at _dmarc.harbour-press.co.uk (the public suffix list's organisational
    # domain), not at _dmarc.co.uk, which the last two labels would give.
    domain = "mail.harbour-press.co.uk"
    dns_server.records.update(records_for(domain, rsa_key[1]) | {"_dmarc.harbour-press.co.uk": ["v=DMARC1; p=reject"]})
    proc = doctor(tmp_path, from_at(domain), "--network", "--nameserver", dns_server.address, key=rsa_key[0])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one(proc, "ok", "dns-dmarc", "_dmarc.harbour-press.co.uk", "reject")
    assert dmarc_asked(dns_server) == [f"_dmarc.{domain}", "_dmarc.harbour-press.co.uk"]


@pytest.mark.parametrize(("domain", "walk", "home"), [
    ("mail.harbour-press.co.uk", ["mail.harbour-press.co.uk", "harbour-press.co.uk", "co.uk"], "harbour-press.co.uk"),
    ("news.bay-gazette.com.au", ["news.bay-gazette.com.au", "bay-gazette.com.au", "com.au"], "bay-gazette.com.au"),
    (f"lists.news.{DOMAIN}", [f"lists.news.{DOMAIN}", f"news.{DOMAIN}", DOMAIN], DOMAIN),
    (DOMAIN, [DOMAIN], DOMAIN),
])
def test_network_without_dmarc_asks_each_parent_and_advises_the_registered_domain(
        tmp_path: Path, rsa_key: tuple[Path, str, bytes], dns_server: TxtServer, domain: str, walk: list[str], home: str) -> None:
    dns_server.records.update(records_for(domain, rsa_key[1]))
    proc = doctor(tmp_path, from_at(domain), "--network", "--nameserver", dns_server.address, key=rsa_key[0])
    only_error(proc, "dns-dmarc", "no DMARC record at " + " or ".join(f"_dmarc.{name}" for name in walk))
    assert dmarc_asked(dns_server) == [f"_dmarc.{name}" for name in walk]  # never the single-label top-level domain
    advice = [line.strip() for line in proc.stdout.splitlines() if " TXT \"v=DMARC1" in line]
    assert advice == [f'_dmarc.{home} TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{home}"'], proc.stdout


def test_network_without_an_answer_is_an_error_not_a_missing_record(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        proc = doctor(tmp_path, GOOD, "--nameserver", f"127.0.0.1:{silent.getsockname()[1]}", key=rsa_key[0])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    one(proc, "error", "dns-spf", "could not check", "no answer from the DNS server 127.0.0.1")


def test_a_malformed_nameserver_is_a_usage_error(tmp_path: Path, rsa_key: tuple[Path, str, bytes]) -> None:
    proc = doctor(tmp_path, GOOD, "--nameserver", "127.0.0.1:notaport", key=rsa_key[0])
    assert proc.returncode == 2 and "--nameserver" in proc.stderr and "HOST[:PORT]" in proc.stderr, proc.stdout + proc.stderr
