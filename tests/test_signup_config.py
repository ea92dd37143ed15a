"""The sign-up's configuration keys: [web].trusted_proxies and the limits, [subscribers] confirmation cap and retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from publisher.config import load_config
from publisher.errors import ConfigError

ENV = {"PUBLISHER_SECRET_KEY": "signup-config-tests-" + "k" * 32}


def test_the_defaults_trust_no_proxy_and_limit_sign_ups(project: Path) -> None:
    cfg = load_config(project / "config.toml", env=ENV)
    assert cfg.web.trusted_proxies == ()
    assert (cfg.web.signups_per_network, cfg.web.signup_window) == (10, "10m")
    assert (cfg.subscribers.confirmations_per_day, cfg.subscribers.confirmation_attempts, cfg.subscribers.confirmation_retry) == (3, 5, "1m")


def test_trusted_proxies_from_the_environment(project: Path) -> None:
    cfg = load_config(project / "config.toml", env={**ENV, "PUBLISHER_WEB__TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8, 2001:db8::/32"})
    assert cfg.web.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "2001:db8::/32")


@pytest.mark.parametrize("text, key", [
    ('[web]\ntrusted_proxies = ["10.0.0.0/8", "proxy.internal"]\n', "web.trusted_proxies"),
    ('[web]\ntrusted_proxies = ["10.0.0.300"]\n', "web.trusted_proxies"),
    ("[web]\nsignups_per_network = 0\n", "web.signups_per_network"),
    ('[web]\nsignup_window = "ten minutes"\n', "web.signup_window"),
    ("[subscribers]\nconfirmations_per_day = 0\n", "subscribers.confirmations_per_day"),
    ("[subscribers]\nconfirmation_attempts = -1\n", "subscribers.confirmation_attempts"),
    ('[subscribers]\nconfirmation_retry = "soon"\n', "subscribers.confirmation_retry"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.key == key and f"[{key}]" in str(info.value) and info.value.exit_code == 2
