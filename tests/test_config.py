"""publisher/config.py: config.toml → frozen dataclasses, environment overrides, validation, secrets."""

from __future__ import annotations

import dataclasses
import re
import stat
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from publisher.config import Config, DevelopmentKeyWarning, Secret, load_config, parse_duration
from publisher.errors import ConfigError

from .conftest import TEST_SECRET_KEY

KEY = TEST_SECRET_KEY
ENV = {"PUBLISHER_SECRET_KEY": KEY}  # an explicit env always carries a key, or a dev key is generated


def leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """('feeds.item_limit', 50), ... for every settable field of a config object (secrets and root excluded)."""
    for f in dataclasses.fields(obj):
        if f.name in ("root", "file", "secret_key", "smtp_password", "api_key", "dkim_key_path", "old_secret_keys", "broker_secret"):
            continue
        value, dotted = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from leaves(value, dotted + ".")
        elif isinstance(value, Mapping):
            for name, entry in value.items():
                yield from leaves(entry, f"{dotted}.{name}.")
        else:
            yield dotted, value


def toml_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys |= toml_keys(value, dotted + ".") if isinstance(value, dict) else {dotted}
    return keys


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str, env: Mapping[str, str] = ENV) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    return info.value


# -- the shipped config.toml ------------------------------------------------------------------


def test_shipped_config_has_the_documented_values(project: Path) -> None:
    cfg = load_config(project / "config.toml")
    assert cfg.file == (project / "config.toml").resolve()
    assert cfg.root == project.resolve()
    assert cfg.site.base_url == "http://127.0.0.1:8000"
    assert cfg.site.timezone == "UTC"
    assert cfg.store.url == "sqlite:///var/publisher.db"
    assert dict(cfg.sources) == {"content": cfg.sources["content"]}
    assert (cfg.sources["content"].kind, cfg.sources["content"].path, cfg.sources["content"].enabled) == ("files", "content", True)
    assert cfg.feeds.formats == ("rss", "atom", "json")
    assert cfg.feeds.item_limit == 50
    assert cfg.digest.schedule == "0 8 * * mon"
    assert cfg.digest.send_empty is False
    assert cfg.delivery.backend == "outbox"
    assert (cfg.delivery.smtp.port, cfg.delivery.smtp.security, cfg.delivery.smtp.timeout) == (587, "starttls", 30.0)
    assert cfg.subscribers.sample_subscribers == ("reader@example.com", "analyst@example.com", "editor@example.com")
    assert cfg.scheduler.ingest_every == "15m"


def test_shipped_config_mirrors_the_embedded_defaults(project: Path) -> None:
    shipped = dict(leaves(load_config(project / "config.toml")))
    defaults = dict(leaves(Config()))
    assert shipped.pop("subscribers.sample_subscribers") != defaults.pop("subscribers.sample_subscribers")
    assert shipped.pop("preview.test_recipients") != defaults.pop("preview.test_recipients")  # a sample address, as above
    assert shipped == defaults
    # ...and it sets every key there is, no more and no fewer
    file_keys = toml_keys(tomllib.loads((project / "config.toml").read_text(encoding="utf-8")))
    assert file_keys == set(dict(leaves(Config())))


def test_every_key_in_the_shipped_config_is_documented(project: Path) -> None:
    lines = (project / "config.toml").read_text(encoding="utf-8").splitlines()
    undocumented = [
        line.split("=")[0].strip()
        for i, line in enumerate(lines)
        if re.match(r"^\s*[A-Za-z0-9_]+\s*=", line)
        and not re.search(r"\s#\s", line)
        and not (i > 0 and lines[i - 1].lstrip().startswith("#"))
    ]
    assert undocumented == []


def test_no_config_file_gives_the_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config()
    assert cfg == Config()
    assert cfg.file is None
    assert cfg.root == Path.cwd() == tmp_path.resolve()


# -- file errors -----------------------------------------------------------------------------


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", env=ENV)
    assert info.value.exit_code == 2
    assert "nope.toml" in str(info.value)
    assert "not found" in str(info.value)


def test_missing_file_named_by_PUBLISHER_CONFIG_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="elsewhere.toml"):
        load_config(env={**ENV, "PUBLISHER_CONFIG": str(tmp_path / "elsewhere.toml")})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[feeds]\nitem_limit = = 5\n")
    assert err.file == str((tmp_path / "config.toml").resolve())
    assert "config.toml" in str(err) and "not valid TOML" in str(err)
    assert "line 2" in str(err)


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[site]\nname = "Caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"config\.toml: is not UTF-8 text"):
        load_config(path, env=ENV)


def test_unknown_key_names_the_closest_known_key(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[feeds]\nitem_limt = 5\n")
    assert err.key == "feeds.item_limt"
    assert "'item_limt'" in str(err) and "Did you mean 'item_limit'?" in str(err)


def test_unknown_section_names_the_closest_known_section(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[feed]\nitem_limit = 5\n")
    assert "'feed'" in str(err) and "Did you mean 'feeds'?" in str(err)


def test_wrong_type_names_the_key_and_what_was_expected(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[feeds]\nitem_limit = "ten"\n')
    assert err.key == "feeds.item_limit"
    assert "[feeds.item_limit]" in str(err) and "expected an integer" in str(err) and "'ten'" in str(err)


@pytest.mark.parametrize("key, var", [("secret_key", "PUBLISHER_SECRET_KEY"), ("smtp_password", "PUBLISHER_SMTP_PASSWORD"), ("api_key", "PUBLISHER_API_KEY")])
def test_top_level_secret_in_the_file_points_to_the_environment(tmp_path: Path, key: str, var: str) -> None:
    err = config_error(tmp_path, f'{key} = "do-not-put-me-here"\n')
    assert "is a secret" in str(err) and var in str(err)
    assert "do-not-put-me-here" not in str(err)


def test_smtp_password_in_the_file_is_rejected(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[delivery.smtp]\npassword = "hunter2"\n')
    assert err.key == "delivery.smtp.password"
    assert "'password'" in str(err)
    assert "hunter2" not in str(err)


# -- environment overrides -------------------------------------------------------------------


@pytest.mark.parametrize(
    "var, value, attribute, expected",
    [
        ("PUBLISHER_DELIVERY__SMTP__PORT", "2525", "delivery.smtp.port", 2525),
        ("PUBLISHER_FEEDS__FORMATS", "rss, atom", "feeds.formats", ("rss", "atom")),
        ("PUBLISHER_DIGEST__SEND_EMPTY", "true", "digest.send_empty", True),
        ("PUBLISHER_SUBSCRIBERS__DOUBLE_OPT_IN", "off", "subscribers.double_opt_in", False),
        ("PUBLISHER_DELIVERY__SMTP__TIMEOUT", "2.5", "delivery.smtp.timeout", 2.5),
        ("PUBLISHER_SOURCES__CONTENT__PATH", "/x", "sources.content.path", "/x"),
    ],
)
def test_environment_overrides_the_file(project: Path, var: str, value: str, attribute: str, expected: Any) -> None:
    cfg = load_config(project / "config.toml", env={**ENV, var: value})
    got = dict(leaves(cfg))[attribute]
    assert got == expected and type(got) is type(expected)


def test_environment_overrides_apply_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={**ENV, "PUBLISHER_SOURCES__CONTENT__PATH": "/x"})
    assert cfg.sources["content"].path == "/x"
    assert cfg.path(cfg.sources["content"].path) == Path("/x")


def test_os_environ_is_read_by_default(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLISHER_DELIVERY__SMTP__PORT", "2525")
    assert load_config(project / "config.toml").delivery.smtp.port == 2525


def test_bad_environment_value_names_the_variable(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(project / "config.toml", env={**ENV, "PUBLISHER_FEEDS__ITEM_LIMIT": "abc"})
    assert "PUBLISHER_FEEDS__ITEM_LIMIT" in str(info.value)
    assert info.value.key == "feeds.item_limit" and "expected an integer" in str(info.value)


def test_unknown_key_from_the_environment_is_an_error(project: Path) -> None:
    with pytest.raises(ConfigError, match="item_limt.*Did you mean 'item_limit'"):
        load_config(project / "config.toml", env={**ENV, "PUBLISHER_FEEDS__ITEM_LIMT": "5"})


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ('[site]\nbase_url = "www.example.org"\n', "site.base_url"),
        ('[site]\ntimezone = "Mars/Olympus_Mons"\n', "site.timezone"),
        ('[digest]\nschedule = "every monday"\n', "digest.schedule"),
        ('[digest]\nschedule = "0 25 * * mon"\n', "digest.schedule"),
        ('[delivery]\nbackend = "carrier-pigeon"\n', "delivery.backend"),
        ('[delivery.smtp]\nsecurity = "ssl"\n', "delivery.smtp.security"),
        ('[sources.content]\nkind = "rss"\n', "sources.content.kind"),
        ('[feeds]\nformats = ["rss", "xml"]\n', "feeds.formats"),
        ("[feeds]\nitem_limit = 0\n", "feeds.item_limit"),
        ('[scheduler]\ningest_every = "often"\n', "scheduler.ingest_every"),
    ],
)
def test_invalid_values_are_rejected_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    err = config_error(tmp_path, text)
    assert err.key == key
    assert f"[{key}]" in str(err)


# -- secrets ---------------------------------------------------------------------------------


def test_secret_key_comes_from_the_environment_and_never_prints(project: Path) -> None:
    cfg = load_config(project / "config.toml", env={"PUBLISHER_SECRET_KEY": "s3cret-value-xyz-0123456789abcdef"})
    assert cfg.secret_key.get() == "s3cret-value-xyz-0123456789abcdef"
    for text in (repr(cfg), str(cfg), str(cfg.secret_key), repr(cfg.secret_key), f"{cfg.secret_key}"):
        assert "s3cret-value-xyz-0123456789abcdef" not in text
    assert not (project / "var" / "secret_key").exists()


def test_development_key_is_generated_once_and_reused(project: Path) -> None:
    with pytest.warns(DevelopmentKeyWarning, match="PUBLISHER_SECRET_KEY is not set"):
        first = load_config(project / "config.toml", env={})
    key_file = project / "var" / "secret_key"
    assert key_file.read_text(encoding="ascii").strip() == first.secret_key.get()
    assert len(first.secret_key.get()) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.secret_key.get() not in repr(first)

    with warnings.catch_warnings():
        warnings.simplefilter("error", DevelopmentKeyWarning)  # said once, when made: not by every command after
        second = load_config(project / "config.toml", env={})
    assert second.secret_key.get() == first.secret_key.get()
    with pytest.warns(DevelopmentKeyWarning):  # ...and whenever mail leaves the machine with it
        load_config(project / "config.toml", env={"PUBLISHER_DELIVERY__BACKEND": "smtp"})


def test_empty_development_key_file_is_never_used_as_the_key(project: Path) -> None:
    """An empty key signs tokens anyone can forge: refuse it, or replace it, but never use it."""
    (project / "var").mkdir()
    (project / "var" / "secret_key").write_text("", encoding="ascii")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DevelopmentKeyWarning)
        try:
            cfg = load_config(project / "config.toml", env={})
        except ConfigError as err:
            assert "secret_key" in str(err)
            return
    assert cfg.secret_key.get() != ""


def test_smtp_password_comes_from_the_environment_and_never_prints(project: Path) -> None:
    cfg = load_config(project / "config.toml", env={**ENV, "PUBLISHER_SMTP_PASSWORD": "hunter2-pw"})
    assert cfg.smtp_password.get() == "hunter2-pw"
    assert "hunter2-pw" not in repr(cfg)
    assert not load_config(project / "config.toml", env=ENV).smtp_password


def test_secret_wrapper() -> None:
    s = Secret("abc")
    assert (s.get(), repr(s), str(s), bool(s), bool(Secret(""))) == ("abc", "Secret('********')", "Secret('********')", True, False)


# -- paths -----------------------------------------------------------------------------------


def test_paths_resolve_against_the_config_files_directory(project: Path, tmp_path: Path) -> None:
    cfg = load_config(project / "config.toml")
    root = project.resolve()
    assert cfg.path("content") == root / "content"
    assert cfg.path("/srv/content") == Path("/srv/content")
    assert cfg.path("~/content") == Path.home() / "content"
    assert cfg.store_url == f"sqlite:///{root}/var/publisher.db"


@pytest.mark.parametrize(
    "url", ["sqlite:////srv/publisher.db", "sqlite:///:memory:", "postgresql+psycopg://user@db:5432/pub"]
)
def test_store_url_leaves_absolute_and_non_file_urls_alone(tmp_path: Path, url: str) -> None:
    cfg = load_config(write(tmp_path, f'[store]\nurl = "{url}"\n'), env=ENV)
    assert cfg.store_url == url


# -- parse_duration --------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("6h", 21600), ("1d", 86400), (" 2 h ", 7200)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "1.5h", "-5m", "15 minutes", "1w"])
def test_parse_duration_rejects_other_text(text: str) -> None:
    with pytest.raises(ConfigError, match="expected a duration") as info:
        parse_duration(text, "scheduler.ingest_every")
    assert info.value.key == "scheduler.ingest_every"


def test_a_bad_value_from_the_environment_is_named_by_its_variable_not_the_file(tmp_path: Path) -> None:
    """The check that refuses it runs after the file and the environment are merged: the message names the variable
    (the file does not hold the value, and an operator would look for it there)."""
    (tmp_path / "config.toml").write_text("[delivery]\nwarmup_start = 200\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "config.toml", env={"PUBLISHER_DELIVERY__WARMUP_START": "0"})
    message = str(caught.value)
    assert message == "[delivery.warmup_start] expected at least 1, got 0 (from $PUBLISHER_DELIVERY__WARMUP_START: fix or unset it)."
    with pytest.raises(ConfigError) as caught:  # a bad value in the file is still the file's
        (tmp_path / "config.toml").write_text("[delivery]\nwarmup_start = 0\n", encoding="utf-8")
        load_config(tmp_path / "config.toml", env={})
    assert str(caught.value).startswith(f"{tmp_path / 'config.toml'}: [delivery.warmup_start] expected at least 1")
