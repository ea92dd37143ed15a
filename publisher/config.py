"""config.toml → frozen dataclasses.

Every key has a default here (the embedded defaults), so the publisher runs with no
config file at all. ``config.toml`` in the repository repeats these defaults with a
comment on every key. Any key can be overridden from the environment with
``PUBLISHER_<SECTION>__<KEY>`` (double underscore for nesting), e.g.
``PUBLISHER_DELIVERY__SMTP__PORT=2525``. Secrets are never read from the file: they
come from the environment only and are wrapped in :class:`Secret` so they never show
in a repr or a log line.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import secrets
import tempfile
import tomllib
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "PUBLISHER_"


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class SiteConfig:
    name: str = "Publisher Sample Institute"
    base_url: str = "http://127.0.0.1:8000"
    language: str = "en"
    timezone: str = "UTC"
    postal_address: str = "1 Example Square, Springfield, EX 00000, USA"
    templates_dir: str = "templates"
    public_dir: str = "public"
    description: str = "Research and commentary from the Publisher Sample Institute."  # the home page's introduction
    page_size: int = 20  # publications per listing page (the front page of a listing holds up to twice as many)
    logo: str = ""  # "/media/logo.svg" (a file of content/images/ or public/) or an https:// URL; empty: the name in text
    accent_color: str = "#0b5cad"  # links and buttons; each colour must keep WCAG AA contrast with the background
    text_color: str = "#1f2328"
    background_color: str = "#ffffff"
    font_family: str = 'Georgia, "Times New Roman", serif'


@dataclass(frozen=True)
class StoreConfig:
    url: str = "sqlite:///var/publisher.db"


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "files"
    path: str = "content"
    url: str = ""
    enabled: bool = True
    topics: tuple[str, ...] = ()
    content_type: str = "Commentary"
    selectors: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestConfig:
    allow_private_addresses: bool = False
    timeout: float = 10.0
    total_timeout: float = 60.0
    max_bytes: int = 10_485_760
    max_redirects: int = 5
    max_file_size: int = 5_242_880  # bytes: a bigger file in content/ (publication or image) is refused unread


@dataclass(frozen=True)
class FeedsConfig:
    output_dir: str = "public/feeds"
    item_limit: int = 50
    formats: tuple[str, ...] = ("rss", "atom", "json")
    icon: str = "/media/icon.png"
    websub_hub: str = ""


@dataclass(frozen=True)
class DigestConfig:
    schedule: str = "0 8 * * mon"
    subject: str = "{site} weekly: {date}"
    from_name: str = "Publisher Sample Institute"
    from_address: str = "digest@example.org"
    reply_to: str = ""
    max_items: int = 40
    send_empty: bool = False
    type_order: tuple[str, ...] = ("Commentary", "Research Brief", "Report", "Multimedia")
    note: str = ""


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "localhost"
    port: int = 587
    security: str = "starttls"
    username: str = ""
    allow_plaintext_auth: bool = False
    timeout: float = 30.0
    connections: int = 2
    rate_limit: float = 0.0


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = ""
    timeout: float = 30.0
    domain: str = ""
    message_stream: str = "broadcast"
    rate_limit: float = 0.0  # messages a second across every worker (the provider's sending limit); 0 = unlimited


@dataclass(frozen=True)
class DeliveryConfig:
    backend: str = "outbox"
    outbox_dir: str = "var/outbox"
    envelope_from: str = ""
    feedback_id: str = ""
    attempts: int = 3
    retry_base: float = 2.0
    batch_size: int = 50
    stale_after: str = "2m"  # only for runs of versions before 0.8 (no lock): a run is now known dead by its lock
    journal_dir: str = "var/journal"  # each run's append-only record of what it sent, replayed after a crash
    retry_first: str = "1m"  # the service's first retry of a deferred recipient; it doubles up to retry_max
    retry_max: str = "4h"
    give_up_after: str = "5d"  # still deferred this long after the issue started: undeliverable (Postfix's queue lifetime)
    dkim_selector: str = ""
    dkim_domain: str = ""
    warmup: bool = False  # a new sending domain's daily volume ramps up (see delivery.warmup)
    warmup_start: int = 200  # messages on its first day...
    warmup_full: int = 200_000  # ...growing each day to this many on day warmup_days,
    warmup_days: int = 42  # when the ramp ends (no limit from then on)
    engine: str = "threads"  # "threads": this process sends; "celery": `publisher worker` processes send (PostgreSQL only)
    broker_url: str = "amqp://guest@127.0.0.1:5672//"  # celery: RabbitMQ (amqp://) or Redis (redis://); a password only in PUBLISHER_BROKER_URL
    task_queue: str = "publisher"  # celery: the broker queue (two lists sharing one broker each need their own)
    task_size: int = 2000  # celery: recipients per task (a hint "these ids of issue X"); a worker claims them batch_size at a time
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    api: ApiConfig = field(default_factory=ApiConfig)


@dataclass(frozen=True)
class SubscribersConfig:
    double_opt_in: bool = True
    check_deliverability: bool = False
    sample_subscribers: tuple[str, ...] = ()
    confirmations_per_day: int = 3  # confirmation emails per address in any 24 h, whoever asks
    confirmation_attempts: int = 5  # sends of one confirmation before it is given up
    confirmation_retry: str = "1m"  # the first wait after a failed send; it doubles each time
    soft_bounce_limit: int = 3  # issues in a row not delivered (mailbox full, or given up): then suppressed as bounced


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    trusted_proxies: tuple[str, ...] = ()  # IPs or CIDRs whose X-Forwarded-For is believed
    signups_per_network: int = 10  # sign-ups per client network (/24, /64) per signup_window
    signup_window: str = "10m"


@dataclass(frozen=True)
class PreviewConfig:
    port: int = 8025
    test_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class SchedulerConfig:
    ingest_every: str = "15m"
    misfire_grace: str = "6h"
    lease: str = "30s"


def _default_sources() -> dict[str, SourceConfig]:
    return {"content": SourceConfig()}


@dataclass(frozen=True)
class Config:
    site: SiteConfig = field(default_factory=SiteConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sources: Mapping[str, SourceConfig] = field(default_factory=_default_sources)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    feeds: FeedsConfig = field(default_factory=FeedsConfig)
    digest: DigestConfig = field(default_factory=DigestConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    subscribers: SubscribersConfig = field(default_factory=SubscribersConfig)
    web: WebConfig = field(default_factory=WebConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Where relative paths are resolved from: the directory of the config file.
    root: Path = field(default=Path("."), compare=False)
    file: Path | None = field(default=None, compare=False)
    secret_key: Secret = field(default_factory=lambda: Secret(""), compare=False, repr=False)
    smtp_password: Secret = field(default_factory=lambda: Secret(""), compare=False, repr=False)
    api_key: Secret = field(default_factory=lambda: Secret(""), compare=False, repr=False)
    dkim_key_path: str = field(default="", compare=False, repr=False)
    old_secret_keys: tuple[Secret, ...] = field(default=(), compare=False, repr=False)
    broker_secret: Secret = field(default_factory=lambda: Secret(""), compare=False, repr=False)  # PUBLISHER_BROKER_URL

    @property
    def broker_url(self) -> str:
        """The Celery broker: PUBLISHER_BROKER_URL (it may hold a password), else [delivery].broker_url."""
        return self.broker_secret.get() or self.delivery.broker_url

    @property
    def verification_keys(self) -> list[str]:
        """The current signing key first, then the retired ones still accepted (PUBLISHER_SECRET_KEY_OLD)."""
        return [self.secret_key.get(), *(k.get() for k in self.old_secret_keys)]

    def path(self, relative: str) -> Path:
        """A configured path, absolute, resolved against the config file's directory."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def store_url(self) -> str:
        """The store URL with a relative SQLite path made absolute against ``root``."""
        url = self.store.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.path(url[len(prefix):]))
        return url


# Keys that are never read from the file, only from these environment variables.
SECRET_ENV = {"secret_key": "PUBLISHER_SECRET_KEY", "smtp_password": "PUBLISHER_SMTP_PASSWORD", "api_key": "PUBLISHER_API_KEY"}
_NOT_FROM_FILE = {"root", "file", "dkim_key_path", "old_secret_keys", "broker_secret", *SECRET_ENV}


def load_config(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (or the embedded defaults when there is none) and the environment.

    ``path`` defaults to ``$PUBLISHER_CONFIG`` or ``./config.toml``. An explicitly named
    file that does not exist is an error; the implicit ``./config.toml`` may be absent.
    """
    env = os.environ if env is None else env
    explicit = path is not None or "PUBLISHER_CONFIG" in env
    file = Path(path if path is not None else env.get("PUBLISHER_CONFIG", "config.toml")).resolve()
    data: dict[str, Any] = {}
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"is not valid TOML: {exc}. Fix the syntax at that line.", file=file) from None
        except UnicodeDecodeError:
            raise ConfigError("is not UTF-8 text.", file=file) from None
    elif explicit:
        raise ConfigError("config file not found. Pass an existing file with --config, or unset PUBLISHER_CONFIG.", file=file)
    else:
        file = None  # embedded defaults
    _apply_env_overrides(data, env)
    values = _build(Config, data, "", file)
    root = file.parent if file else Path.cwd()
    cfg = dataclasses.replace(values, root=root, file=file, smtp_password=Secret(env.get(SECRET_ENV["smtp_password"], "")),
                              api_key=Secret(env.get(SECRET_ENV["api_key"], "")), dkim_key_path=env.get("PUBLISHER_DKIM_KEY_PATH", ""),
                              broker_secret=Secret(env.get("PUBLISHER_BROKER_URL", "")))
    from .config_checks import validate  # here: it needs this module's types and parse_duration

    try:
        validate(cfg)
    except ConfigError as exc:
        var = _env_var_for(exc.key, env)
        if var is None:
            raise
        # The value came from the environment: say so, or the operator looks for it in a file that does not have it.
        raise ConfigError(f"{exc.reason.rstrip('.')} (from ${var}: fix or unset it).", key=exc.key) from None
    return dataclasses.replace(cfg, secret_key=_secret_key(cfg, env), old_secret_keys=_old_secret_keys(env))


def _env_var_for(key: str | None, env: Mapping[str, str]) -> str | None:
    """The environment variable that set the setting ``key`` ("delivery.warmup_start"), if one did."""
    if not key:
        return None
    wanted = ENV_PREFIX + "__".join(key.split(".")).upper()
    return next((name for name in env if name.upper() == wanted), None)


def _apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if any(not p for p in parts):
            raise ConfigError(f"environment variable {name} has an empty part; use PUBLISHER_<SECTION>__<KEY>.")
        node = data
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"environment variable {name} goes into {part!r}, which is not a section.")
            node = nxt
        node[parts[-1]] = _EnvValue(raw, name)


class _EnvValue(str):
    """A string from the environment, converted to the field's type when the config is built."""

    def __new__(cls, value: str, var: str) -> _EnvValue:
        obj = super().__new__(cls, value)
        obj.var = var  # type: ignore[attr-defined]
        return obj


def _build(cls: type, data: Any, prefix: str, file: Path | None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a table (section), got {type(data).__name__}.", file=file, key=prefix or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _NOT_FROM_FILE}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(_unknown_key_message(key, list(fields), prefix), file=file, key=dotted)
        kwargs[key] = _convert(hints[key], value, dotted, file)
    return cls(**kwargs)


def _unknown_key_message(key: str, known: list[str], prefix: str) -> str:
    if key in SECRET_ENV:
        return f"{key!r} is a secret and is never read from the file; set {SECRET_ENV[key]} in the environment."
    if key in ("password", "api_key", "token", "secret"):
        return f"{key!r} looks like a secret, and secrets are never read from the file; set it in the environment (e.g. PUBLISHER_SMTP_PASSWORD)."
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    where = f"in [{prefix}]" if prefix else "at the top level"
    return f"unknown key {key!r} {where}.{hint} Known keys: {', '.join(sorted(known))}."


def _convert(tp: Any, value: Any, key: str, file: Path | None) -> Any:
    origin = typing.get_origin(tp)
    source = f" (from ${value.var})" if isinstance(value, _EnvValue) else ""  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, file)
    if origin in (Mapping, dict):
        value_type = typing.get_args(tp)[1]
        if not isinstance(value, dict):
            raise ConfigError(f"expected a table of named entries, got {value!r}{source}.", file=file, key=key)
        return types.MappingProxyType({name: _convert(value_type, v, f"{key}.{name}", file) for name, v in value.items()})
    if origin is tuple:
        if isinstance(value, _EnvValue):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"expected a list of strings, got {value!r}{source}.", file=file, key=key)
        return tuple(value)
    if tp is bool:
        if isinstance(value, _EnvValue):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        elif isinstance(value, bool):
            return value
        raise ConfigError(f"expected true or false, got {value!r}{source}.", file=file, key=key)
    if tp in (int, float):
        if isinstance(value, _EnvValue):
            try:
                return tp(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or isinstance(value, int)):
            return tp(value)
        raise ConfigError(f"expected {'an integer' if tp is int else 'a number'}, got {value!r}{source}.", file=file, key=key)
    if tp is str:
        if isinstance(value, str):
            return str(value)
        raise ConfigError(f"expected a string, got {value!r}{source}.", file=file, key=key)
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in this module


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


def parse_duration(text: str, key: str = "") -> int:
    """'90s', '15m', '6h', '1d' → seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f"expected a duration like '15m', '6h' or '90s', got {text!r}.", key=key or None)
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# A signing key anyone can guess lets them forge every unsubscribe and preferences link: 32 bytes is what
# secrets.token_urlsafe(32) gives (256 bits of randomness, 43 characters).
MIN_KEY_BYTES = 32
# Fewer distinct characters than this is no random key (token_urlsafe(32) has about 30): 40 spaces, 'a' * 32...
MIN_KEY_SYMBOLS = 8
MAKE_KEY = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'


def _secret_key(cfg: Config, env: Mapping[str, str]) -> Secret:
    """PUBLISHER_SECRET_KEY, or a development key generated once under var/ (with a warning)."""
    value = env.get(SECRET_ENV["secret_key"], "")
    if value:
        if _key_bytes(value) < MIN_KEY_BYTES:
            raise ConfigError(f"PUBLISHER_SECRET_KEY is {_key_bytes(value)} bytes long; it must be at least {MIN_KEY_BYTES} bytes, "
                              f"or the links it signs can be forged by guessing it. Make one with: {MAKE_KEY}")
        if len(set(value)) < MIN_KEY_SYMBOLS:
            raise ConfigError(f"PUBLISHER_SECRET_KEY repeats {len(set(value))} different character(s): a key like 'aaaa...' is "
                              f"long but guessable. Make a random one with: {MAKE_KEY}")
        return Secret(value)
    key_file = cfg.path("var/secret_key")
    created = not key_file.is_file()
    if created:
        _create_key_file(key_file)
    try:
        value = key_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the development signing key in {key_file} ({type(exc).__name__}); "
                          "delete the file to have a new one made, or set PUBLISHER_SECRET_KEY.") from None
    if _key_bytes(value) < MIN_KEY_BYTES:
        raise ConfigError(f"the development signing key in {key_file} is empty or shorter than {MIN_KEY_BYTES} bytes; "
                          "delete the file to have a new one made, or set PUBLISHER_SECRET_KEY.")
    # Said when the key is made, and whenever mail leaves the machine with it (then its links are in people's
    # inboxes, and a new server would break them); not by every local command (`publisher status` shows it).
    if created or cfg.delivery.backend != "outbox":
        warnings.warn(
            f"PUBLISHER_SECRET_KEY is not set; using the development key in {key_file}"
            f"{' (made now)' if created else ''}. Set PUBLISHER_SECRET_KEY in production so links survive a new server.",
            DevelopmentKeyWarning,
            stacklevel=3,
        )
    return Secret(value)


def _create_key_file(key_file: Path) -> None:
    """Write the key to a temp file, then link it into place: the key file appears whole, once, even under a race."""
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=key_file.parent, prefix=".secret_key.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
        os.link(tmp, key_file)
    except FileExistsError:
        pass  # another process made it first: use theirs
    finally:
        os.unlink(tmp)


def _old_secret_keys(env: Mapping[str, str]) -> tuple[Secret, ...]:
    """PUBLISHER_SECRET_KEY_OLD: retired keys, comma-separated, still accepted when links are read.

    A short one is accepted with a warning rather than refused: refusing it would break every unsubscribe
    link already sent with it, which no later fix can mend. The warning says what it costs.
    """
    keys = [k.strip() for k in env.get("PUBLISHER_SECRET_KEY_OLD", "").split(",") if k.strip()]
    for n, key in enumerate(keys, start=1):
        if _key_bytes(key) < MIN_KEY_BYTES:
            warnings.warn(f"PUBLISHER_SECRET_KEY_OLD entry {n} of {len(keys)} is {_key_bytes(key)} bytes long (under {MIN_KEY_BYTES}): "
                          "anyone who guesses it can forge unsubscribe and preferences links. Remove it once the mail it signed "
                          "no longer matters.", WeakOldKeyWarning, stacklevel=3)
    return tuple(Secret(k) for k in keys)


def _key_bytes(value: str) -> int:
    return len(value.encode("utf-8"))


class SecretKeyWarning(UserWarning):
    """Something about the signing keys an operator should fix; the CLI prints these."""


class DevelopmentKeyWarning(SecretKeyWarning):
    pass


class WeakOldKeyWarning(SecretKeyWarning):
    pass
