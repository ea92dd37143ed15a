"""Every CLI command through click's CliRunner, on a copy of the sample project."""

from __future__ import annotations

import csv
import io
import mailbox
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from publisher.cli import main


@pytest.fixture
def cli(project: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(project)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)

    return invoke


def commands(group=main, prefix=()):  # every leaf command, as argv tuples
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):
            yield from commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.parametrize("argv", list(commands()), ids=" ".join)
def test_every_command_has_help_with_an_example(argv: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output and f"publisher {' '.join(argv)}" in result.output


def test_run_once_closes_the_cycle_and_says_where_things_are(cli, project: Path) -> None:
    result = cli("run", "--once")
    assert result.exit_code == 0, result.output
    assert "22 new" in result.output
    assert f"{project / 'public' / 'feeds'}" in result.output
    assert f"{project / 'var' / 'outbox'}/new/" in result.output
    assert len(mailbox.Maildir(project / "var" / "outbox", create=False)) == 3  # the three sample subscribers
    again = cli("run", "--once")
    assert "22 unchanged" in again.output and "not due" in again.output
    assert len(mailbox.Maildir(project / "var" / "outbox", create=False)) == 3


def test_run_force_digest_with_nothing_new_sends_nothing(cli, project: Path) -> None:
    cli("run", "--once")
    result = cli("run", "--once", "--force-digest")
    assert "nothing new since the last issue" in result.output
    assert len(mailbox.Maildir(project / "var" / "outbox", create=False)) == 3


def test_force_digest_needs_once(cli) -> None:
    result = cli("run", "--force-digest")
    assert result.exit_code == 2 and "--force-digest only goes with --once" in result.output


def test_ingest_prints_what_is_new(cli) -> None:
    result = cli("ingest")
    assert result.exit_code == 0
    assert "22 new" in result.output
    assert '''new: "Japan's Alliance with the U.S. Has Just Gone Global" (publications/2024-04-16-japans-alliance-with-the-us-has-gone-global.md)''' in result.output
    assert "0 new, 0 updated, 22 unchanged" in cli("ingest").output


def test_ingest_reports_a_broken_file_and_goes_on(cli, project: Path) -> None:
    (project / "content" / "publications" / "broken.md").write_text('+++\ntitle = "x\n+++\nbody\n', encoding="utf-8")
    result = cli("ingest")
    assert result.exit_code == 0
    assert "22 new" in result.output and "1 skipped" in result.output
    assert "broken.md:2" in result.output and "invalid TOML" in result.output


def test_feeds_build_writes_every_format(cli, project: Path) -> None:
    cli("ingest")
    result = cli("feeds", "build")
    assert result.exit_code == 0
    feeds = project / "public" / "feeds"
    for name in ("all.rss", "all.atom", "all.json", "topics/security-cooperation.atom", "types/research-brief.json"):
        assert (feeds / name).is_file(), name
    assert "all unchanged" in cli("feeds", "build").output


def test_digest_preview_html_text_and_a_subscribers_variant(cli, project: Path) -> None:
    cli("ingest")
    out = project / "next.html"
    result = cli("digest", "preview", "--out", str(out))
    assert result.exit_code == 0
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>")
    assert html.index("Yes to Striking Iranian-Backed Militants") < html.index("Japan&#39;s Alliance with the U.S. Has Just Gone Global")
    text = cli("digest", "preview", "--text", "--email", "reader@example.com").output
    assert "FEATURED: Yes to Striking Iranian-Backed Militants" in text
    assert "reader@example.com" in text and "/unsubscribe/" in text
    eml = project / "next.eml"
    assert cli("digest", "preview", "--eml", "--email", "reader@example.com", "--out", str(eml)).exit_code == 0
    import email as email_lib
    import email.policy

    msg = email_lib.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert msg["To"] == "reader@example.com" and msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "reader@example.com" in msg.get_body(("plain",)).get_content()
    missing = cli("digest", "preview", "--email", "nobody@example.com")
    assert missing.exit_code == 1 and "no subscriber" in missing.output


def test_digest_send_and_dry_run(cli, project: Path) -> None:
    cli("ingest")
    dry = cli("digest", "send", "--dry-run")
    assert "22 publications, 3 recipients" in dry.output and not (project / "var" / "outbox").exists()
    sent = cli("digest", "send")
    assert "3 sent" in sent.output
    assert "nothing new" in cli("digest", "send").output


def test_subscribers_add_list_remove(cli) -> None:
    assert "no topics yet: run `publisher ingest` first" in cli("subscribers", "add", "a@example.com", "--topic", "security-cooperation").output
    assert cli("ingest").exit_code == 0  # the topics come from content/topics/
    added = cli("subscribers", "add", "New.Reader@Example.com", "--confirmed", "--topic", "security-cooperation")
    assert added.exit_code == 0 and "added: new.reader@example.com (active)" in added.output
    assert "already known" in cli("subscribers", "add", "new.reader@example.com").output
    listed = cli("subscribers", "list", "--status", "active").output
    assert "new.reader@example.com\tactive\tsecurity-cooperation" in listed
    assert cli("subscribers", "remove", "new.reader@example.com").exit_code == 0
    assert "new.reader@example.com\tunsubscribed" in cli("subscribers", "list").output
    assert cli("subscribers", "remove", "ghost@example.com").exit_code == 1


def test_subscribers_add_rejects_a_bad_address(cli) -> None:
    result = cli("subscribers", "add", "not-an-address")
    assert result.exit_code == 2 and "not a valid email address" in result.output


def test_subscribers_import_reports_rows_and_export_round_trips(cli, project: Path) -> None:
    data = "email,topics\nOne@Example.com,security-cooperation\nbroken-address,\none@example.com,\ntwo@example.com,\n"
    (project / "list.csv").write_text(data, encoding="utf-8")
    result = cli("subscribers", "import", "list.csv", "--confirmed")
    assert "2 added, 0 already known, 0 suppressed, 2 rejected" in result.output
    assert "line 3:" in result.output and "line 4: one@example.com appears earlier" in result.output
    exported = cli("subscribers", "export").output
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert {"email", "status", "topics", "created_at", "confirmed_at"} <= set(rows[0])
    assert {r["email"]: r["status"] for r in rows}["one@example.com"] == "active"
    cli("subscribers", "export", "out.csv")
    assert (project / "out.csv").read_text(encoding="utf-8") == exported


def test_import_without_email_column_is_a_clear_error(cli, project: Path) -> None:
    (project / "bad.csv").write_text("name\nx\n", encoding="utf-8")
    result = cli("subscribers", "import", "bad.csv")
    assert result.exit_code == 2 and "no 'email' column" in result.output


def test_config_error_exits_2_and_names_file_and_key(cli, project: Path) -> None:
    (project / "config.toml").write_text('[feeds]\nitem_limt = 5\n', encoding="utf-8")
    result = cli("feeds", "build")
    assert result.exit_code == 2
    assert "config.toml" in result.output and "item_limt" in result.output and "item_limit" in result.output


def test_missing_explicit_config_exits_2(cli, project: Path) -> None:
    result = cli("--config", str(project / "nope.toml"), "ingest")
    assert result.exit_code == 2 and "nope.toml" in result.output


def test_env_override_reaches_the_command(cli, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLISHER_FEEDS__OUTPUT_DIR", "elsewhere")
    monkeypatch.setenv("PUBLISHER_FEEDS__FORMATS", "atom")
    cli("ingest")
    cli("feeds", "build")
    assert (project / "elsewhere" / "all.atom").is_file() and not (project / "elsewhere" / "all.rss").exists()


@pytest.mark.parametrize("argv", list(commands()), ids=" ".join)
def test_every_command_is_documented_in_the_readme(argv: tuple[str, ...]) -> None:
    from .conftest import REPO

    assert f"`publisher {' '.join(argv)}" in (REPO / "README.md").read_text(encoding="utf-8")


def test_digest_note_sets_shows_and_clears(cli) -> None:
    assert "no note set" in cli("digest", "note").output
    assert "note set" in cli("digest", "note", "Two new reports this week.").output
    assert cli("digest", "note").output.strip() == "Two new reports this week."
    cli("ingest")
    assert "Two new reports this week." in cli("digest", "preview", "--text").output
    assert "note cleared" in cli("digest", "note", "--clear").output
