"""`publisher doctor`: what is wrong with the sending setup, in words an operator can act on, before the first send.

Each check is a plain function of the loaded :class:`Config` returning :class:`Finding` s: ``ok``, ``note`` (nothing
for this publisher to check: a mail API does it), ``warning`` (mail goes, but less of it arrives) or ``error`` (fix it
before sending). Offline by default; :func:`check_dns` (``--network``) also reads the SPF, DKIM and DMARC records.

Nothing secret is ever part of a finding: not the signing key, not the DKIM private key, not a password. The DKIM
*public* key is, since publishing it is the point.

The organisational domain (DMARC's relaxed alignment) is guessed without a public-suffix library (none is installed,
and the list goes stale): the last two labels of a name, or three under a country's second level such as ``co.uk`` or
``com.au`` (see :func:`registrable_guess`). A suffix that rule does not know (``blogspot.com``) can still call two
unrelated names aligned. The DMARC lookup does not rely on it: it asks the From domain and each of its parents in turn (see :func:`check_dmarc`), which finds the record wherever
it is published for that name.
"""

from __future__ import annotations

import base64
import email
import email.policy
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from .config import MAKE_KEY, SECRET_ENV, Config, SiteConfig
from .config_checks import is_local_host
from .errors import PublisherError

LEVELS = ("ok", "note", "warning", "error")
SIGNS_HERE = ("outbox", "smtp")  # the backends that sign with PUBLISHER_DKIM_KEY_PATH and send with envelope_from
PROVIDERS = {"postmark": "Postmark", "sendgrid": "SendGrid", "mailgun": "Mailgun", "resend": "Resend"}
# Names no one can receive mail at or publish DNS for (RFC 2606, RFC 6761): the sample config's, and tests'.
RESERVED_DOMAINS = ("example.com", "example.org", "example.net", "localhost")
RESERVED_SUFFIXES = (".example.com", ".example.org", ".example.net", ".example", ".test", ".invalid", ".localhost", ".local")
SAMPLE_POSTAL_ADDRESS = SiteConfig().postal_address
MAKE_DKIM_KEY = "openssl genrsa -out dkim.pem 2048"
DNS_STRING = 255  # the longest character-string a TXT record holds; longer values are split into several
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True)
class Finding:
    level: str  # one of LEVELS
    check: str  # a short name: "alignment", "dkim", "dns-spf"...
    message: str  # names the setting, its value and the fix
    detail: tuple[str, ...] = field(default=())  # lines to print below it: a DNS record to publish

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}")


# -- domains -------------------------------------------------------------------------------------

def org_domain(domain: str) -> str:
    """DMARC's organisational domain, guessed without the public suffix list (see :func:`registrable_guess`): the last
    two labels, or three under a country's second level (example.co.uk, not co.uk)."""
    return registrable_guess(domain)


def aligned(a: str, b: str) -> bool:
    """DMARC relaxed alignment: the two names share an organisational domain."""
    return bool(a) and bool(b) and org_domain(a) == org_domain(b)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def from_domain(cfg: Config) -> str:
    return _domain_of(cfg.digest.from_address)


def dkim_domain(cfg: Config) -> str:
    """The d= of the signatures: [delivery].dkim_domain, or the From domain (as delivery.dkim.signer_for)."""
    return (cfg.delivery.dkim_domain or cfg.digest.from_address.rpartition("@")[2]).strip().lower().rstrip(".")


def envelope_from(cfg: Config) -> str:
    return cfg.delivery.envelope_from or cfg.digest.from_address


def _reserved(domain: str) -> bool:
    if domain in RESERVED_DOMAINS or domain.endswith(RESERVED_SUFFIXES) or "." not in domain:
        return True
    try:
        ipaddress.ip_address(domain.strip("[]"))
        return True
    except ValueError:
        return False


def _dkim_on(cfg: Config) -> bool:
    return bool(cfg.dkim_key_path or cfg.delivery.dkim_selector)


# -- the checks ----------------------------------------------------------------------------------

def check_backend(cfg: Config) -> list[Finding]:
    d = cfg.delivery
    out = []
    if d.backend == "outbox":
        out.append(Finding("warning", "backend", f"[delivery].backend = 'outbox': messages go into the local folder "
                           f"{cfg.path(d.outbox_dir)}/new and nothing leaves this machine. The checks below are for sending "
                           "for real; once they pass, set backend to 'smtp' (your relay) or a mail API (postmark, sendgrid, "
                           "mailgun, resend)."))
    elif d.backend == "smtp":
        where = " (on this machine: it must relay on to the internet itself)" if is_local_host(d.smtp.host) else ""
        out.append(Finding("ok", "backend", f"[delivery].backend = 'smtp': mail goes out through {d.smtp.host}:{d.smtp.port}{where}."))
    else:
        out.append(Finding("ok", "backend", f"[delivery].backend = {d.backend!r}: mail goes out through {PROVIDERS[d.backend]}'s API."))
    if cfg.subscribers.sample_subscribers:
        out.append(Finding("warning", "backend", f"[subscribers].sample_subscribers = {list(cfg.subscribers.sample_subscribers)!r} "
                           "is still set: those are the sample's made-up readers. Remove the line before the first real send "
                           "(the ones it seeded are then unsubscribed by themselves)."))
    return out


def check_alignment(cfg: Config) -> list[Finding]:
    """DMARC passes when the From domain is aligned with the DKIM d= domain or with the envelope sender's domain."""
    sender = cfg.digest.from_address
    domain = from_domain(cfg)
    if "@" not in sender or not _DNS_NAME.fullmatch(domain):
        return [Finding("error", "alignment", f"[digest].from_address = {sender!r} is not an address like 'newsletter@yourdomain.org'. "
                        "Set it to an address at a domain you own.")]
    if _reserved(domain):
        return [Finding("error", "alignment", f"[digest].from_address = {sender!r}: {domain} is a reserved example name (the sample "
                        "config's), not a domain anyone can send from or publish DNS records for. Receivers reject or bin such mail. "
                        "Set it to an address at a domain you own, e.g. 'newsletter@yourdomain.org'.")]
    org = org_domain(domain)
    backend = cfg.delivery.backend
    if backend in SIGNS_HERE:
        return _alignment_here(cfg, domain, org)
    name = PROVIDERS[backend]
    if backend == "mailgun":
        sending = cfg.delivery.api.domain.strip().lower().rstrip(".")
        if not aligned(sending, domain):
            return [Finding("error", "alignment", f"[delivery.api].domain = {cfg.delivery.api.domain!r} is not under {org}, the "
                            f"organisational domain of the From address {sender!r}: Mailgun signs with, and takes bounces at, that "
                            f"domain, so DMARC fails. Use a Mailgun sending domain under {org}, e.g. 'mg.{org}'.")]
        return [Finding("ok", "alignment", f"the From domain {domain} and Mailgun's sending domain {sending} share the organisational "
                        f"domain {org} (guessed from the name's last labels).")]
    return [Finding("note", "alignment", f"{name} signs the messages and sets their envelope sender: for DMARC to pass, verify {domain} "
                    f"in {name}'s dashboard and publish the DKIM records it shows (and, for SPF alignment, its custom "
                    f"Return-Path under {org}). From is {sender!r}.")]


def _alignment_here(cfg: Config, domain: str, org: str) -> list[Finding]:
    out = []
    signing = dkim_domain(cfg)
    dkim_aligned = True
    if _dkim_on(cfg):
        if not _DNS_NAME.fullmatch(signing) or not aligned(signing, domain):
            dkim_aligned = False
            out.append(Finding("error", "alignment", f"[delivery].dkim_domain = {cfg.delivery.dkim_domain!r} is not under {org}, the "
                               f"organisational domain of [digest].from_address {cfg.digest.from_address!r}: DMARC does not count a "
                               f"signature by another domain. Set dkim_domain to '' (then {domain} signs) or to a name under {org}."))
    else:
        dkim_aligned = False
    bounce = envelope_from(cfg)
    bounce_domain = _domain_of(bounce)
    setting = f"[delivery].envelope_from = {cfg.delivery.envelope_from!r}"
    if "@" not in bounce or not _DNS_NAME.fullmatch(bounce_domain):
        out.append(Finding("error", "alignment", f"{setting} is not an address like 'bounces@{domain}'. Set it to an address under "
                           f"{org} that can receive bounces, or to '' to use the From address."))
    elif not aligned(bounce_domain, domain):
        level = "warning" if dkim_aligned else "error"
        why = ("DMARC still passes on the DKIM signature, but SPF cannot help it" if dkim_aligned else
               "and without an aligned DKIM signature DMARC fails, so receivers following your DMARC policy reject or bin the mail")
        out.append(Finding(level, "alignment", f"{setting}: the envelope sender's domain {bounce_domain} is not under {org}, the "
                           f"organisational domain of the From address {cfg.digest.from_address!r}: {why}. Use an address "
                           f"under {org} for bounces (e.g. 'bounces@{domain}'), or '' for the From address."))
    if not out:
        parts = [f"the From domain {domain}"]
        if _dkim_on(cfg):
            parts.append(f"the DKIM signing domain {signing}")
        parts.append(f"the envelope sender's domain {bounce_domain}")
        out.append(Finding("ok", "alignment", f"{', '.join(parts[:-1])} and {parts[-1]} share the organisational domain {org} "
                           "(guessed from the name's last labels): DMARC alignment holds."))
    return out


@dataclass(frozen=True)
class DkimKey:
    """What the doctor learnt from PUBLISHER_DKIM_KEY_PATH; never the private key itself."""

    selector: str
    domain: str
    public_key: str  # base64 DER SubjectPublicKeyInfo: the p= of the DNS record
    bits: int

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def value(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_key}"

    def record(self) -> str:
        """The TXT record, ready for a zone file: the value in strings of at most 255 characters, as DNS needs."""
        chunks = [self.value[i:i + DNS_STRING] for i in range(0, len(self.value), DNS_STRING)]
        return f"{self.name} TXT " + " ".join(f'"{c}"' for c in chunks)

    def publish(self) -> tuple[str, ...]:
        return (self.record(), f"(in a DNS provider's web form: name {self.name}, type TXT, and the value {self.value[:22]}... in one "
                "piece, without the quotes)")


def dkim_key(cfg: Config) -> tuple[DkimKey | None, list[Finding]]:
    """The configured DKIM key's public half, or why there is none (the findings). Offline."""
    path, selector = cfg.dkim_key_path, cfg.delivery.dkim_selector
    if not path and not selector:
        return None, [Finding("warning", "dkim", "DKIM signing is off (PUBLISHER_DKIM_KEY_PATH and [delivery].dkim_selector are not set). "
                              "Gmail and Yahoo require bulk senders to sign with DKIM; unsigned mail is more often marked as spam. "
                              f"Make a key with `{MAKE_DKIM_KEY}`, set PUBLISHER_DKIM_KEY_PATH to its path and [delivery].dkim_selector "
                              "to a name of your choice (e.g. 'news2026'), then run `publisher doctor` again for the DNS record.")]
    if not selector:
        return None, [Finding("error", "dkim", f"PUBLISHER_DKIM_KEY_PATH = {path!r} but [delivery].dkim_selector is empty, so nothing can be "
                              "sent: set the selector (a name of your choice, e.g. 'news2026'; the DNS record goes at "
                              "<selector>._domainkey.<domain>).")]
    if not _DNS_NAME.fullmatch(selector):
        return None, [Finding("error", "dkim", f"[delivery].dkim_selector = {selector!r} is not a DNS name: use letters, digits and "
                              "hyphens, e.g. 'news2026'.")]
    if not path:
        return None, [Finding("error", "dkim", f"[delivery].dkim_selector = {selector!r} but PUBLISHER_DKIM_KEY_PATH is not set, so messages "
                              f"go out unsigned. Set PUBLISHER_DKIM_KEY_PATH to the private key's file (make one with `{MAKE_DKIM_KEY}`).")]
    domain = dkim_domain(cfg)
    if not _DNS_NAME.fullmatch(domain):
        return None, [Finding("error", "dkim", f"the DKIM signing domain {domain!r} ([delivery].dkim_domain, or the From address's domain) "
                              "is not a domain name.")]
    try:
        data = open(path, "rb").read()
    except OSError as exc:
        return None, [Finding("error", "dkim", f"PUBLISHER_DKIM_KEY_PATH = {path!r} cannot be read: {exc.strerror}. Point it at the PEM "
                              "private key, readable by the user the publisher runs as.")]
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    try:
        key: Any = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return None, [Finding("error", "dkim", f"PUBLISHER_DKIM_KEY_PATH = {path!r} is encrypted with a passphrase, which the publisher "
                              f"cannot type in. Write it out without one: openssl pkey -in {path} -out dkim-plain.pem (then chmod 600).")]
    except (ValueError, UnsupportedAlgorithm):
        what = "a PEM private key"
        try:
            serialization.load_pem_public_key(data)
            what = "a public key; it must be the private one"
        except (ValueError, UnsupportedAlgorithm):
            pass
        return None, [Finding("error", "dkim", f"PUBLISHER_DKIM_KEY_PATH = {path!r} is not {what} ('-----BEGIN PRIVATE KEY-----' or "
                              f"'-----BEGIN RSA PRIVATE KEY-----'). Make one with `{MAKE_DKIM_KEY}`.")]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None, [Finding("error", "dkim", f"PUBLISHER_DKIM_KEY_PATH = {path!r} is an ed25519 key: the publisher signs with rsa-sha256 "
                              "(the one algorithm every receiver verifies). Make an RSA key with "
                              f"`{MAKE_DKIM_KEY}` and point PUBLISHER_DKIM_KEY_PATH at it.")]
    if not isinstance(key, rsa.RSAPrivateKey):
        return None, [Finding("error", "dkim", f"PUBLISHER_DKIM_KEY_PATH = {path!r} is not an RSA key, and the publisher signs with "
                              f"rsa-sha256. Make an RSA key with `{MAKE_DKIM_KEY}` and point PUBLISHER_DKIM_KEY_PATH at it.")]
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    found = DkimKey(selector, domain, base64.b64encode(public).decode("ascii"), key.key_size)
    if found.bits < 1024:
        return None, [Finding("error", "dkim", f"PUBLISHER_DKIM_KEY_PATH = {path!r} is a {found.bits}-bit RSA key: receivers ignore "
                              f"signatures by keys under 1024 bits. Make a 2048-bit one: `{MAKE_DKIM_KEY}`.")]
    return found, []


def check_dkim(cfg: Config) -> list[Finding]:
    """PUBLISHER_DKIM_KEY_PATH a usable RSA key, a selector, a real signature that verifies; the DNS record to publish."""
    if cfg.delivery.backend not in SIGNS_HERE:
        name = PROVIDERS[cfg.delivery.backend]
        if cfg.dkim_key_path:
            return [Finding("warning", "dkim", f"PUBLISHER_DKIM_KEY_PATH is set, but with backend {cfg.delivery.backend!r} {name} signs the "
                            f"messages and this key is not used. Set up DKIM in {name}'s dashboard instead, and unset it.")]
        signing = cfg.delivery.api.domain if cfg.delivery.backend == "mailgun" else from_domain(cfg)
        return [Finding("note", "dkim", f"{name} signs the messages (this publisher does not with backend {cfg.delivery.backend!r}): "
                        f"publish the DKIM record(s) {name}'s dashboard shows for {signing}.")]
    key, findings = dkim_key(cfg)
    if key is None:
        return findings
    import importlib.util

    if importlib.util.find_spec("dkim") is None:
        return [Finding("error", "dkim", 'the key is fine, but signing needs dkimpy, which is not installed: pip install "publisher[dkim]".')]
    problem = _sign_and_verify(cfg, key)
    if problem:
        return [Finding("error", "dkim", problem)]
    out = []
    size = f"an RSA {key.bits}-bit key"
    if key.bits < 2048:
        out.append(Finding("warning", "dkim", f"PUBLISHER_DKIM_KEY_PATH is {size}: it works, but 2048 bits is what Gmail and "
                           f"Yahoo recommend. Make a new one (`{MAKE_DKIM_KEY}`) under a new selector when you can."))
    try:
        world_readable = os.stat(cfg.dkim_key_path).st_mode & 0o004
    except OSError:
        world_readable = 0
    if world_readable:
        out.append(Finding("warning", "dkim", f"PUBLISHER_DKIM_KEY_PATH = {cfg.dkim_key_path!r} can be read by every user on this machine, "
                           f"and anyone with it can sign mail as {key.domain}: chmod 600 {cfg.dkim_key_path} (owned by the publisher's user)."))
    out.append(Finding("ok", "dkim", f"PUBLISHER_DKIM_KEY_PATH is {size}; a test message signed with it (d={key.domain}, s={key.selector}, "
                       "List-Unsubscribe and List-Unsubscribe-Post included) verifies. Publish this DNS record:", key.publish()))
    return out


def _sign_and_verify(cfg: Config, key: DkimKey) -> str | None:
    """Sign a real message with the sender's own signer, verify it against our public key: None, or what went wrong."""
    import dkim

    from .delivery.dkim import signer_for

    message = sample_message(cfg)
    try:
        signer = signer_for(cfg)
        assert signer is not None
        signature = signer.sign(message)
    except (PublisherError, dkim.DKIMException) as exc:
        return f"signing a test message with PUBLISHER_DKIM_KEY_PATH failed: {exc}"
    asked: list[bytes] = []

    def our_record(name: bytes, timeout: int = 5) -> bytes:
        asked.append(name)
        return key.value.encode("ascii") if name.rstrip(b".").decode("ascii", "replace").lower() == key.name.lower() else b""

    if not dkim.verify(signature + message, dnsfunc=our_record):
        return (f"a test message signed with PUBLISHER_DKIM_KEY_PATH does not verify against its own public key (looked up as "
                f"{b', '.join(asked).decode('ascii', 'replace') or 'nothing'}): this is a bug; please report it.")
    headers = email.message_from_bytes(signature, policy=email.policy.default)
    signed = re.sub(r"\s", "", str(headers.get("DKIM-Signature", "")))
    h = next((tag[2:] for tag in signed.split(";") if tag.startswith("h=")), "")
    missing = {"list-unsubscribe", "list-unsubscribe-post"} - set(h.lower().split(":"))
    if missing:
        return f"the signature does not cover {', '.join(sorted(missing))}, which Gmail requires for one-click unsubscribe: this is a bug."
    return None


def sample_message(cfg: Config) -> bytes:
    """The digest's real headers (compile_message) for a sample subscriber with real signed links, around a short body."""
    from .delivery.message import compile_message
    from .delivery.send import links_for
    from .digest.render import SLOT_NAMES, RenderedIssue, Slots
    from .models import DigestIssue, Subscriber, SubscriberStatus

    now = datetime.now(timezone.utc)
    slots = Slots()
    body = " ".join(slots.marker(name) for name in SLOT_NAMES)
    rendered = RenderedIssue(DigestIssue("doctor", now, (), ()), "publisher doctor", f"<p>{body}</p>", f"{body}\n", slots)
    sub = Subscriber(0, "subscriber@example.com", SubscriberStatus.ACTIVE, now, now)
    message = compile_message(cfg, rendered, now)
    return message.for_recipient(f"<doctor.{secrets.token_hex(8)}@{message.domain}>", sub.email, links_for(cfg, sub))


def _elide_token(url: str) -> str:
    return re.sub(r"/unsubscribe/[^/>\s]+$", "/unsubscribe/<token>", url)


def check_unsubscribe(cfg: Config) -> list[Finding]:
    """One-click unsubscribe (RFC 8058): an absolute https link under [site].base_url, and List-Unsubscribe-Post."""
    base = cfg.site.base_url.rstrip("/")
    head = sample_message(cfg).split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    headers = email.message_from_bytes(head, policy=email.policy.default)
    links = re.findall(r"<([^>]+)>", str(headers.get("List-Unsubscribe", "")))
    web = next((u for u in links if not u.lower().startswith("mailto:")), "")
    shown = _elide_token(web) or "none"
    parts = urlsplit(base)
    if parts.scheme != "https":
        return [Finding("error", "unsubscribe", f"[site].base_url = {cfg.site.base_url!r} is not https: each message's one-click "
                        f"unsubscribe link is built from it ({shown}), and Gmail and Yahoo honour one-click unsubscribe only over "
                        "https. Set base_url to your site's public https address, e.g. 'https://www.yourdomain.org', where "
                        "`publisher serve` answers (behind your web server).")]
    if is_local_host(parts.hostname or ""):
        return [Finding("error", "unsubscribe", f"[site].base_url = {cfg.site.base_url!r} is this machine's own address: the unsubscribe "
                        f"link in every message ({shown}) would point at each reader's own computer. Set it to your site's public "
                        "https address.")]
    post = str(headers.get("List-Unsubscribe-Post", ""))
    if not web.startswith(base + "/") or not urlsplit(web).netloc:
        return [Finding("error", "unsubscribe", f"the List-Unsubscribe header's link {shown} is not an absolute https URL under "
                        f"[site].base_url = {cfg.site.base_url!r}: this is a bug; please report it.")]
    if post != "List-Unsubscribe=One-Click":
        return [Finding("error", "unsubscribe", f"the message's List-Unsubscribe-Post header is {post!r}, not 'List-Unsubscribe=One-Click': "
                        "this is a bug; please report it.")]
    return [Finding("ok", "unsubscribe", f"every message carries List-Unsubscribe <{shown}> (https, under [site].base_url) and "
                    "List-Unsubscribe-Post: List-Unsubscribe=One-Click; `publisher serve` must answer at that address.")]


def check_postal_address(cfg: Config) -> list[Finding]:
    address = cfg.site.postal_address.strip()
    if not address:
        return [Finding("error", "postal-address", "[site].postal_address is empty: the US CAN-SPAM Act (and the rules of many other "
                        "countries) require your physical postal address in every newsletter. Set it to your organisation's address "
                        "(a registered P.O. box will do); it is printed in every digest's footer.")]
    if address == SAMPLE_POSTAL_ADDRESS or "example square" in address.lower():
        return [Finding("error", "postal-address", f"[site].postal_address = {address!r} is the sample's made-up address: the US "
                        "CAN-SPAM Act requires your real physical postal address in every newsletter. Set it to your organisation's "
                        "address (a registered P.O. box will do).")]
    return [Finding("ok", "postal-address", f"[site].postal_address = {address!r} is printed in every digest's footer.")]


def check_smtp_tls(cfg: Config) -> list[Finding]:
    s = cfg.delivery.smtp
    if cfg.delivery.backend != "smtp":
        how = "its API over https" if cfg.delivery.backend in PROVIDERS else "no network at all"
        return [Finding("ok", "smtp-tls", f"[delivery.smtp] is not used: backend {cfg.delivery.backend!r} uses {how}.")]
    out = []
    local = is_local_host(s.host)
    if s.security == "none":
        if local:
            out.append(Finding("warning", "smtp-tls", f"[delivery.smtp].security = 'none' to {s.host}:{s.port}: unencrypted, which is only "
                               "safe because the relay is on this machine. Make sure it relays on with TLS."))
        else:
            out.append(Finding("error", "smtp-tls", f"[delivery.smtp].security = 'none': the connection to {s.host}:{s.port} is not "
                               "encrypted, so the messages, your readers' addresses and any login cross the network in clear. Set "
                               "security = 'starttls' (port 587) or 'tls' (port 465), as your relay documents."))
    if s.allow_plaintext_auth:
        out.append(Finding("error", "smtp-tls", "[delivery.smtp].allow_plaintext_auth = true lets the SMTP password go unencrypted. "
                           "Remove the line (or set it to false) and use security = 'starttls' or 'tls'."))
    if s.security == "starttls" and s.port == 465:
        out.append(Finding("warning", "smtp-tls", "[delivery.smtp].security = 'starttls' with port = 465: port 465 expects TLS from the "
                           "first byte, and the connection will hang or fail. Use security = 'tls' with 465, or port = 587."))
    elif s.security == "tls" and s.port in (25, 587):
        out.append(Finding("warning", "smtp-tls", f"[delivery.smtp].security = 'tls' with port = {s.port}: that port speaks plain SMTP "
                           "and upgrades with STARTTLS. Use security = 'starttls' with it, or port = 465."))
    if s.username and not cfg.smtp_password:
        out.append(Finding("error", "smtp-tls", f"[delivery.smtp].username = {s.username!r} but PUBLISHER_SMTP_PASSWORD is not set: the "
                           "relay will refuse the login. Set it in the service's environment."))
    if not out:
        out.append(Finding("ok", "smtp-tls", f"[delivery.smtp].security = {s.security!r} to {s.host}:{s.port}: the connection "
                           f"{'and login are' if s.username else 'is'} encrypted, with the relay's certificate checked."))
    return out


def check_secret_key(cfg: Config) -> list[Finding]:
    """PUBLISHER_SECRET_KEY from the environment, not the development key load_config made in var/secret_key."""
    # As config._secret_key decides: a non-empty PUBLISHER_SECRET_KEY in the environment is the key, whatever its value
    # (an operator moving to production may set it to the development key's value, to keep the links already sent working).
    dev_file = cfg.path("var/secret_key")
    if not os.environ.get(SECRET_ENV["secret_key"], ""):
        return [Finding("error", "secret-key", f"PUBLISHER_SECRET_KEY is not set: the unsubscribe and preferences links are signed with the "
                        f"development key in {dev_file}, made on this machine. A new server, or a cleaned var/, makes a new one, and "
                        f"every link already in readers' inboxes stops working. Make a key with {MAKE_KEY}, keep it with your other "
                        "secrets, and set PUBLISHER_SECRET_KEY in the service's environment.")]
    return [Finding("ok", "secret-key", "PUBLISHER_SECRET_KEY is set from the environment.")]


OFFLINE_CHECKS: tuple[Callable[[Config], list[Finding]], ...] = (
    check_backend, check_alignment, check_dkim, check_unsubscribe, check_postal_address, check_smtp_tls, check_secret_key)


# -- DNS (--network) -----------------------------------------------------------------------------

class DnsTrouble(Exception):
    """DNS could not be asked (a timeout, SERVFAIL): not the same as "there is no such record"."""


def parse_nameserver(text: str) -> tuple[str, int]:
    """HOST[:PORT] ("127.0.0.1:5353", "[::1]:5353", "::1", "ns.example.net") → (IP address, port). ValueError if not."""
    text = text.strip()
    port = 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected HOST[:PORT] like '127.0.0.1:5353' or '[::1]:5353', got {text!r}")
            port_text = rest[1:]
            port = int(port_text) if port_text.isdigit() else -1
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text) if port_text.isdigit() else -1
    else:
        host = text
    if not host or not 0 < port < 65536:
        raise ValueError(f"expected HOST[:PORT] like '127.0.0.1:5353' or '[::1]:5353', got {text!r}")
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0], port
    except OSError as exc:
        raise ValueError(f"cannot find the address of the name server {host!r}: {exc.strerror or exc}") from None


def make_resolver(nameserver: str | None = None) -> Any:
    """dnspython's resolver: the system's (/etc/resolv.conf), or the one server named by --nameserver."""
    import dns.resolver

    if nameserver:
        host, port = parse_nameserver(nameserver)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    else:
        resolver = dns.resolver.Resolver()
    resolver.use_edns(0, 0, 1232)
    resolver.timeout, resolver.lifetime = 2.0, 6.0
    return resolver


def txt_records(resolver: Any, name: str) -> list[str]:
    """The TXT records at ``name``, each one's strings joined; [] when the name or the record does not exist."""
    import dns.exception
    import dns.resolver

    try:
        answer = resolver.resolve(name.rstrip(".") + ".", "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.resolver.LifetimeTimeout:
        raise DnsTrouble(f"no answer from the DNS server{_servers(resolver)} for {name} within {resolver.lifetime:.0f} s") from None
    except dns.resolver.NoNameservers:
        raise DnsTrouble(f"the DNS server{_servers(resolver)} failed to answer for {name} (SERVFAIL or refused)") from None
    except dns.exception.DNSException as exc:
        raise DnsTrouble(f"asking DNS for {name} failed: {exc}") from None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def _servers(resolver: Any) -> str:
    return f" {', '.join(str(n) for n in resolver.nameservers)}" + (f" port {resolver.port}" if resolver.port != 53 else "")


def _tags(record: str) -> dict[str, str]:
    """'v=DKIM1; k=rsa; p=...' → {'v': 'DKIM1', 'k': 'rsa', 'p': '...'}; whitespace inside a value dropped (p= may be split)."""
    tags = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags[name.strip().lower()] = re.sub(r"\s", "", value)
    return tags


def check_spf(cfg: Config, resolver: Any) -> list[Finding]:
    backend = cfg.delivery.backend
    if backend in SIGNS_HERE:
        domain = _domain_of(envelope_from(cfg))
        whose = "the envelope sender's domain ([delivery].envelope_from, or the From address)"
    elif backend == "mailgun":
        domain = cfg.delivery.api.domain.strip().lower().rstrip(".")
        whose = "Mailgun's sending domain ([delivery.api].domain)"
    else:
        name = PROVIDERS[backend]
        return [Finding("note", "dns-spf", f"not checked: {name} sends with its own envelope sender, so SPF is checked against {name}'s "
                        f"domain or the custom Return-Path you set up in its dashboard.")]
    records = [r for r in txt_records(resolver, domain) if re.match(r"(?i)v=spf1(\s|$)", r)]
    relay = f" (for backend 'smtp': {cfg.delivery.smtp.host})" if backend == "smtp" else ""
    if not records:
        return [Finding("error", "dns-spf", f"no SPF record at {domain}, {whose}: receivers cannot tell which servers may send for it. "
                        f"Publish one TXT record naming your relay{relay}, as the relay's or mail provider's documentation gives it, e.g.",
                        (f'{domain} TXT "v=spf1 include:<your relay\'s SPF domain> -all"',))]
    if len(records) > 1:
        return [Finding("error", "dns-spf", f"{len(records)} SPF records at {domain}: receivers treat more than one as an error (RFC 7208) "
                        "and SPF fails. Merge them into one TXT record starting with v=spf1.", tuple(f'"{r}"' for r in records))]
    record = records[0]
    if re.search(r"(?i)(^|\s)\+?all(\s|$)", record):
        return [Finding("error", "dns-spf", f"the SPF record at {domain}, {record!r}, ends in '+all': it lets every server on the internet "
                        "send as you. End it in '-all' (or '~all').")]
    return [Finding("ok", "dns-spf", f"SPF record at {domain}: {record!r}. Check that it names your relay{relay}; the doctor cannot tell "
                    "which servers an include: covers.")]


def check_dkim_dns(cfg: Config, resolver: Any) -> list[Finding]:
    if cfg.delivery.backend not in SIGNS_HERE:
        name = PROVIDERS[cfg.delivery.backend]
        return [Finding("note", "dns-dkim", f"not checked: {name} signs with its own selector; its dashboard says whether the records "
                        "it gave you are published.")]
    key, _ = dkim_key(cfg)
    if key is None:
        return [Finding("note", "dns-dkim", "not checked: there is no usable DKIM key here yet (see the dkim line above).")]
    records = [r for r in txt_records(resolver, key.name) if "p=" in r.replace(" ", "")]
    if not records:
        return [Finding("error", "dns-dkim", f"no DKIM record at {key.name}: receivers cannot check the signatures, and DKIM fails. "
                        "Publish this record:", key.publish())]
    if len(records) > 1:
        return [Finding("error", "dns-dkim", f"{len(records)} DKIM records at {key.name}: receivers may take either. Keep only this one:",
                        key.publish())]
    tags = _tags(records[0])
    published = tags.get("p", "")
    if not published:
        return [Finding("error", "dns-dkim", f"the DKIM record at {key.name} has an empty p=, which means the key was revoked: every "
                        "signature fails. Publish this record instead:", key.publish())]
    numbers = _rsa_public_numbers(published) if tags.get("k", "rsa").lower() == "rsa" else None
    if numbers is None:
        return [Finding("error", "dns-dkim", f"the DKIM record at {key.name} has p={published[:12]}..., which is not an RSA public key "
                        "(base64 DER): every signature would fail. Replace it with this record:", key.publish())]
    if numbers != _rsa_public_numbers(key.public_key):
        return [Finding("error", "dns-dkim", f"the DKIM record at {key.name} holds a different key from PUBLISHER_DKIM_KEY_PATH "
                        f"(published p={published[:12]}..., ours p={key.public_key[:12]}...): every signature would fail. Replace "
                        "it with this record (or point PUBLISHER_DKIM_KEY_PATH at the key it was made from):", key.publish())]
    return [Finding("ok", "dns-dkim", f"the DKIM record at {key.name} holds the public key of PUBLISHER_DKIM_KEY_PATH.")]


def _rsa_public_numbers(p: str) -> Any:
    """A DKIM p= (base64, whitespace ignored) as RSA public numbers, or None. Receivers accept the key as DER
    SubjectPublicKeyInfo (RFC 6376, what we print) or as a bare PKCS#1 RSAPublicKey (what `openssl rsa -RSAPublicKey_out`
    and some DNS tools write): the same key either way, so it is the numbers that are compared, not the text."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    text = re.sub(r"\s", "", p)
    try:
        der = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    try:
        key: Any = serialization.load_der_public_key(der)  # SubjectPublicKeyInfo (and, in newer cryptography, PKCS#1)
    except (ValueError, UnsupportedAlgorithm):
        lines = "\n".join(text[i:i + 64] for i in range(0, len(text), 64))
        try:
            key = serialization.load_pem_public_key(f"-----BEGIN RSA PUBLIC KEY-----\n{lines}\n-----END RSA PUBLIC KEY-----\n".encode())
        except (ValueError, UnsupportedAlgorithm):
            return None
    return key.public_numbers() if isinstance(key, rsa.RSAPublicKey) else None


# Second-level labels under which a country's names are registered (co.uk, com.au, ac.jp): see registrable_guess.
SUFFIX_LABELS = frozenset({"co", "com", "net", "org", "gov", "ac", "edu"})


def registrable_guess(domain: str) -> str:
    """The name its owner registered, guessed without the public suffix list: the last two labels, or the last three
    when those two look like a public suffix (both at most 3 characters, the first of them co, com, net, org, gov, ac
    or edu: co.uk, com.au, ac.jp), so that mail.example.co.uk gives example.co.uk and never co.uk."""
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) <= 3 and len(labels[-2]) <= 3 and labels[-2] in SUFFIX_LABELS:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def check_dmarc(cfg: Config, resolver: Any) -> list[Finding]:
    """The DMARC record for the From domain: ``_dmarc.<From domain>``, then ``_dmarc.<each parent>`` up to (not
    including) the single-label top-level domain, the first found counting. Receivers look at the From domain, then its
    organisational domain from the public suffix list (RFC 7489 6.6.3; DMARCbis walks the same tree), and which of the
    parents that is cannot be told here without the list: the walk finds it wherever it is (mail.example.co.uk asks
    mail.example.co.uk, example.co.uk, co.uk). When there is none, the record to publish is advised at
    ``_dmarc.<registrable_guess(From domain)>``, never at a public-suffix-looking name like co.uk."""
    domain = from_domain(cfg)
    labels = domain.split(".")
    names = [f"_dmarc.{'.'.join(labels[i:])}" for i in range(max(len(labels) - 1, 1))]
    found_at, records = names[0], []
    for name in names:  # the From domain's own record first, then each parent's
        records = [r for r in txt_records(resolver, name) if re.match(r"(?i)v\s*=\s*DMARC1\s*(;|$)", r)]
        if records:
            found_at = name
            break
    if not records:
        home = registrable_guess(domain)
        return [Finding("error", "dns-dmarc", f"no DMARC record at {' or '.join(names)}: Gmail and Yahoo require one from bulk senders. "
                        "Start with this one, which asks for reports and blocks nothing (p=none); once the reports show only your "
                        "own mail, move to p=quarantine:", (f'_dmarc.{home} TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{home}"',))]
    if len(records) > 1:
        return [Finding("error", "dns-dmarc", f"{len(records)} DMARC records at {found_at}: receivers then ignore DMARC (RFC 7489). "
                        "Keep one.", tuple(f'"{r}"' for r in records))]
    tags = _tags(records[0])
    policy = (tags.get("sp") if found_at != f"_dmarc.{domain}" and tags.get("sp") else tags.get("p", "")).lower()
    out = []
    if policy not in ("none", "quarantine", "reject"):
        out.append(Finding("error", "dns-dmarc", f"the DMARC record at {found_at}, {records[0]!r}, has no valid p= (none, quarantine or "
                           "reject) right after v=DMARC1: receivers ignore it. Write it as 'v=DMARC1; p=none; rua=mailto:...'."))
    elif policy == "none":
        out.append(Finding("warning", "dns-dmarc", f"the DMARC record at {found_at} has p=none: enough for Gmail and Yahoo, but it protects "
                           "nothing (anyone can send as you and receivers still deliver it). Once the reports (rua=) show only your own "
                           "mail, move to p=quarantine, then p=reject."))
    if cfg.delivery.backend in SIGNS_HERE:
        if tags.get("adkim", "r").lower() == "s" and _dkim_on(cfg) and dkim_domain(cfg) != domain:
            out.append(Finding("error", "dns-dmarc", f"the DMARC record at {found_at} asks for strict DKIM alignment (adkim=s), but the "
                               f"signatures are by {dkim_domain(cfg)}, not exactly {domain}: set [delivery].dkim_domain = '' or drop adkim=s."))
        if tags.get("aspf", "r").lower() == "s" and _domain_of(envelope_from(cfg)) != domain:
            out.append(Finding("warning", "dns-dmarc", f"the DMARC record at {found_at} asks for strict SPF alignment (aspf=s), but the "
                               f"envelope sender is at {_domain_of(envelope_from(cfg))}, not exactly {domain}: SPF will not count for DMARC."))
    if not out:
        out.append(Finding("ok", "dns-dmarc", f"DMARC record at {found_at}: {records[0]!r} (policy {policy})."))
    return out


NETWORK_CHECKS = (check_spf, check_dkim_dns, check_dmarc)


def check_dns(cfg: Config, resolver: Any) -> list[Finding]:
    out = []
    for n, check in enumerate(NETWORK_CHECKS):
        try:
            out += check(cfg, resolver)
        except DnsTrouble as exc:  # the next lookups would wait as long for nothing: one error, the rest skipped
            skipped = ", ".join(c.__name__.removeprefix("check_").replace("_dns", "") for c in NETWORK_CHECKS[n + 1:])
            out.append(Finding("error", f"dns-{check.__name__.removeprefix('check_').replace('_dns', '')}", f"could not check: {exc}"
                               f"{f' ({skipped} not checked either)' if skipped else ''}. Try again, or name a DNS server that "
                               "answers with --nameserver HOST[:PORT]."))
            break
    return out


# -- the whole run -------------------------------------------------------------------------------

def run_checks(cfg: Config, *, network: bool = False, nameserver: str | None = None) -> list[Finding]:
    """Every offline check, then with ``network`` the DNS ones. ValueError for a malformed ``nameserver``."""
    resolver = None
    if network:
        import dns.resolver

        try:
            resolver = make_resolver(nameserver)
        except dns.resolver.NoResolverConfiguration:
            resolver = None
    findings: list[Finding] = []
    for check in OFFLINE_CHECKS:
        try:
            findings += check(cfg)
        except PublisherError as exc:  # e.g. a template or config problem met while building the test message
            findings.append(Finding("error", check.__name__.removeprefix("check_").replace("_", "-"), str(exc)))
    if network:
        if resolver is None:
            findings.append(Finding("error", "dns", "this machine has no DNS server configured (/etc/resolv.conf): name one with "
                                    "--nameserver HOST[:PORT]."))
        else:
            findings += check_dns(cfg, resolver)
    return findings


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    n = dict.fromkeys(LEVELS, 0)
    for f in findings:
        n[f.level] += 1
    return n


def report_lines(findings: list[Finding], *, network: bool = False) -> list[str]:
    """One line per finding ("error: dkim: ..."), its detail indented below, then the summary."""
    lines = []
    for f in findings:
        lines.append(f"{f.level}: {f.check}: {f.message}")
        lines.extend(f"    {d}" for d in f.detail)
    lines.append(summary(findings, network=network))
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary(findings: list[Finding], *, network: bool = False) -> str:
    n = counts(findings)
    tally = ", ".join(_plural(n[level], level) for level in ("error", "warning") if n[level]) or "no errors or warnings"
    dns = "" if network else " DNS was not looked at: run `publisher doctor --network` once the records are published."
    if n["error"]:
        return f"summary: {tally} ({n['ok']} ok). Fix the errors, then run `publisher doctor` again.{dns}"
    if n["warning"]:
        return f"summary: {tally} ({n['ok']} ok): mail can go, but read the warnings.{dns}"
    return f"summary: {tally} ({n['ok']} ok): ready for a first send; try `publisher digest send --test-to <your address>`.{dns}"
