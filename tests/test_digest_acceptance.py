"""Acceptance of the weekly digest, end to end: a real store, real rendering (Jinja2 + MJML), the real Maildir outbox."""

from __future__ import annotations

import email
import email.policy
import json
import mailbox
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import feedparser
import lxml.html
import pytest
from markupsafe import escape

from publisher.config import Config
from publisher.delivery.send import links_for
from publisher.digest.issue import MAX_HTML_BYTES, plan_issue, render_variants
from publisher.digest.render import Renderer, size_as_sent
from publisher.errors import TemplateError
from publisher.models import Image, Publication, SubscriberStatus
from publisher.pipeline import run_ingest, send_digest
from publisher.store import Store, open_store
from subscribers.service import add_subscriber

from .conftest import NOW

FEATURED = ("Yes to Striking Iranian-Backed Militants", "From Forward Presence to Forward Defense: NATO's Defense of the Baltics")
LATER = NOW + timedelta(days=7)


@pytest.fixture
def db(cfg: Config) -> Iterator[Store]:
    store = open_store(cfg.store_url)
    yield store
    store.close()


# -- helpers -------------------------------------------------------------------------------------


def raw_messages(cfg: Config) -> list[bytes]:
    box = mailbox.Maildir(cfg.path(cfg.delivery.outbox_dir), create=False)
    return [box.get_bytes(key) for key in box.keys()]


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def bodies(msg: EmailMessage) -> tuple[str, str]:
    """(decoded HTML, decoded text) of a multipart/alternative digest."""
    html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html_part is not None and text_part is not None
    return html_part.get_content(), text_part.get_content()


def linked_titles(html: str, urls: set[str]) -> list[str]:
    """The text of every link to a publication, in document order (image links have none)."""
    doc = lxml.html.fromstring(html)
    return [a.text_content().strip() for a in doc.iter("a") if a.get("href") in urls and a.text_content().strip()]


def assert_lines_fit(raw: bytes) -> None:
    assert max(len(line) for line in raw.splitlines()) <= 998


def write_md(project: Path, slug: str, title: str, topics: tuple[str, ...] = ("other-topic",), extra: str = "") -> None:
    """A publication file in the same TOML front-matter format as the sample content."""
    (project / "content" / "publications" / f"{slug}.md").write_text(
        f"+++\ntitle = {json.dumps(title)}\ndate = 2024-05-01T13:00:00Z\ncontent_type = \"Commentary\"\n"
        f"topics = {json.dumps(list(topics))}\nauthors = [\"Avery Lund\"]\nsummary = \"A short summary of {slug}.\"\n"
        f"url = \"http://127.0.0.1:8000/commentary/2024/05/{slug}.html\"\n{extra}+++\n\nThe body of {slug}.\n",
        encoding="utf-8")


def make_pub(n: int, **kw: object) -> Publication:
    when = NOW - timedelta(days=30, minutes=n)
    p = Publication(id=f"acc-{n}", url=f"http://127.0.0.1:8000/acc/{n}.html", title=f"Acceptance item {n}",
                    summary=f"Summary of item {n}.", content_type="Report", published_at=when, updated_at=when,
                    topics=("security-cooperation",), authors=("Avery Lund",))
    return replace(p, **kw)  # type: ignore[arg-type]


def deliver(cfg: Config, db: Store, pubs: list[Publication]) -> tuple[bytes, str, str]:
    """Store ``pubs``, send to one active subscriber; the raw message and its decoded HTML and text."""
    for p in pubs:
        db.upsert_publication(p, NOW)
    add_subscriber(db, "reader@example.com", NOW, confirmed=True)
    assert send_digest(cfg, db, NOW).sent == 1
    (raw,) = raw_messages(cfg)
    return (raw, *bodies(parse(raw)))


# -- 1. the sample digest as delivered ------------------------------------------------------------


def test_sample_digest_is_delivered_complete_and_well_formed(cfg: Config, db: Store) -> None:
    run_ingest(cfg, db, NOW)
    sub, _ = add_subscriber(db, "Reader@Example.com", NOW, confirmed=True)
    assert send_digest(cfg, db, NOW).sent == 1
    (raw,) = raw_messages(cfg)
    msg = parse(raw)
    html, text = bodies(msg)
    assert msg.get_content_type() == "multipart/alternative" and msg["To"] == "reader@example.com"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]

    pubs = db.publications()
    titles = [p.title for p in pubs]
    # Featured first, by rank, in both parts.
    shown = linked_titles(html, {p.url for p in pubs})
    assert shown[:2] == list(FEATURED) and sorted(shown) == sorted(titles)
    assert str(escape(FEATURED[1])) in html and "NATO&#39;s Defense of the Baltics" in html
    in_text = sorted(titles, key=text.index)
    assert in_text[:2] == list(FEATURED)
    assert text.index(f"FEATURED: {FEATURED[1]}") < min(text.index(f"* {t} (") for t in titles if t not in FEATURED)

    doc = lxml.html.fromstring(html)
    images = list(doc.iter("img"))
    assert images
    for img in images:
        assert (img.get("alt") or "").strip(), lxml.html.tostring(img)
        assert (img.get("src") or "").startswith("http://127.0.0.1:8000/")
    assert len(html.encode("utf-8")) < 102_000
    assert_lines_fit(raw)

    links = links_for(cfg, sub)
    for body in (html, text):
        assert sub.email in body and links["unsubscribe_url"] in body and links["preferences_url"] in body
        assert not re.search(r"slot-[0-9a-f]{32}-", body)  # every slot filled
    assert f"Unsubscribe: {links['unsubscribe_url']}" in text
    assert msg["List-Unsubscribe"].startswith(f"<{links['unsubscribe_url']}>")


# -- 2. topic variants -----------------------------------------------------------------------------


def test_topic_variants_get_their_own_items_and_everyone_gets_one_message(cfg: Config, db: Store, project: Path) -> None:
    (project / "content" / "topics" / "other-topic.md").write_text('+++\nslug = "other-topic"\nname = "Other Topic"\n+++\nOther.\n', encoding="utf-8")
    for n in range(3):
        write_md(project, f"other-{n}", f"Other topic piece {n}")
    assert not run_ingest(cfg, db, NOW).errors
    for address, topics in (("sec@example.com", ["security-cooperation"]), ("other@example.com", ["other-topic"]), ("all@example.com", [])):
        add_subscriber(db, address, NOW, confirmed=True, topics=topics)
    add_subscriber(db, "pending@example.com", NOW)  # not confirmed: gets nothing

    outcome = send_digest(cfg, db, NOW)
    msgs = {m["To"]: bodies(m) for m in map(parse, raw_messages(cfg))}
    assert outcome.sent == len(msgs) == 3 and set(msgs) == {"sec@example.com", "other@example.com", "all@example.com"}

    pubs = db.publications()
    urls = {p.url for p in pubs}
    got = {to: set(linked_titles(html, urls)) for to, (html, _) in msgs.items()}
    sec = {p.title for p in pubs if "security-cooperation" in p.topics}
    other = {p.title for p in pubs if "other-topic" in p.topics}
    assert len(sec) == 22 and other == {f"Other topic piece {n}" for n in range(3)}
    assert got["sec@example.com"] == sec and got["other@example.com"] == other
    # Everything (25 items) is over the size cap as sent (the sample's 22 come to about 97 KB quoted-printable):
    # the featured and newest fit, the rest are "more on the site".
    more = re.search(r"And (\d+) more on the site", msgs["all@example.com"][0])
    assert got["all@example.com"] < sec | other and more and len(got["all@example.com"]) + int(more.group(1)) == 25
    for to, (_, text) in msgs.items():
        assert all((t in text) == (t in got[to]) for t in sec | other)


def test_each_variant_is_rendered_once_however_many_subscribers_share_it(cfg: Config, db: Store) -> None:
    run_ingest(cfg, db, NOW)
    for n in range(5):
        add_subscriber(db, f"sec{n}@example.com", NOW, confirmed=True, topics=["security-cooperation"])
    for n in range(3):
        add_subscriber(db, f"all{n}@example.com", NOW, confirmed=True)
    topic_sets = [s.topics for s in db.subscribers(status=SubscriberStatus.ACTIVE)]
    plan = plan_issue(cfg, db, NOW)

    renderer = Renderer(cfg)
    variants = render_variants(cfg, plan, topic_sets, renderer)
    assert len(topic_sets) == 8 and renderer.renders == len(set(topic_sets)) == 2
    assert set(variants) == {(), ("security-cooperation",)}

    shared_only = Renderer(cfg)  # nobody without topics: the everything variant (the web copy) is rendered all the same
    assert set(render_variants(cfg, plan, [("security-cooperation",)] * 5, shared_only)) == {(), ("security-cooperation",)}
    assert shared_only.renders == 2

    outcome = send_digest(cfg, db, NOW)
    assert outcome.sent == 8 and sorted(parse(r)["To"] for r in raw_messages(cfg)) == sorted(
        s.email for s in db.subscribers(status=SubscriberStatus.ACTIVE))


# -- 3. the size cap ---------------------------------------------------------------------------------


def test_a_huge_week_is_cut_to_fit_gmail_and_says_how_many_more(cfg: Config, db: Store) -> None:
    summary = ("Allied planners weigh the cost of forward defence against the need for reserves at home; " * 5)[:400]
    pubs = [make_pub(n, summary=f"{n}: {summary}", topics=("a",) if n % 2 else ("b",), featured=n < 4,
                     image=Image(f"http://127.0.0.1:8000/media/{n}.png", alt=f"Picture {n}")) for n in range(300)]
    for p in pubs:
        db.upsert_publication(p, NOW)
    variants = render_variants(cfg, plan_issue(cfg, db, NOW), [("a",), ("b",)])
    assert set(variants) == {(), ("a",), ("b",)}
    for key, rendered in variants.items():
        total = 300 if key == () else 150
        held = len(rendered.issue.publications)
        assert size_as_sent(rendered.html) <= MAX_HTML_BYTES
        assert 0 < held < cfg.digest.max_items < total  # the size cap, not max_items, decided
        assert rendered.issue.more_count == total - held
        assert f"And {total - held} more on the site" in rendered.html
        assert f"And {total - held} more on the site: http://127.0.0.1:8000/" in rendered.text

    add_subscriber(db, "reader@example.com", NOW, confirmed=True)
    send_digest(cfg, db, NOW)
    (raw,) = raw_messages(cfg)
    html, text = bodies(parse(raw))
    html_part = next(p for p in parse(raw).walk() if p.get_content_type() == "text/html")
    assert len(str(html_part.get_payload(decode=False)).encode("ascii")) < 102_000  # as it is in the message
    assert "more on the site" in html and "more on the site" in text
    assert_lines_fit(raw)


# -- 4. bad input --------------------------------------------------------------------------------------


def test_items_without_image_summary_or_author(cfg: Config, db: Store) -> None:
    pubs = [make_pub(1, featured=True, summary="", authors=()),
            make_pub(2, summary="", authors=(), image=None),
            make_pub(3, authors=(), image=Image("http://127.0.0.1:8000/media/3.png")),  # no alt, no caption
            make_pub(4, featured=True, image=Image("http://127.0.0.1:8000/media/4.png", caption="A caption"))]
    raw, html, text = deliver(cfg, db, pubs)
    for n in range(1, 5):
        assert f"Acceptance item {n}" in html and f"Acceptance item {n}" in text
    assert "None" not in html and "None" not in text
    assert "Report, " in text and ", by " not in text.split("FEATURED: Acceptance item 1")[1].split("\n")[1]
    alts = {img.get("src"): img.get("alt") for img in lxml.html.fromstring(html).iter("img")}
    assert alts == {"http://127.0.0.1:8000/media/3.png": "Acceptance item 3", "http://127.0.0.1:8000/media/4.png": "A caption"}
    assert_lines_fit(raw)


def test_a_blank_image_alt_falls_back_to_the_title(cfg: Config, db: Store) -> None:
    _, html, _ = deliver(cfg, db, [make_pub(1, image=Image("http://127.0.0.1:8000/media/1.png", alt="   "))])
    (img,) = lxml.html.fromstring(html).iter("img")
    assert img.get("alt") == "Acceptance item 1"


def test_a_2000_character_title_keeps_every_line_within_998_octets(cfg: Config, db: Store) -> None:
    long_titles = [(f"Item {n} " + "very long title words " * 100)[:2000] for n in range(2)]
    raw, html, text = deliver(cfg, db, [make_pub(0, title=long_titles[0], featured=True), make_pub(1, title=long_titles[1])])
    assert_lines_fit(raw)
    for title in long_titles:
        assert len(title) == 2000 and title in text
        assert title in linked_titles(html, {"http://127.0.0.1:8000/acc/0.html", "http://127.0.0.1:8000/acc/1.html"})


@pytest.mark.parametrize("field", ["summary", "title"])
def test_markup_and_scripts_are_dropped(cfg: Config, db: Store, field: str) -> None:
    markup = '<em>Big</em> news <script>alert("x")</script><img src=x onerror="alert(1)"><a href="javascript:alert(2)">here</a>'
    pubs = [make_pub(n, featured=n == 0, **{field: markup}) for n in range(3)]
    raw, html, text = deliver(cfg, db, pubs)
    for body in (html, text):
        assert "<script" not in body.lower()
        assert "alert(" not in body and "javascript:" not in body
        assert "Big news here" in body
    assert "&lt;em&gt;" not in html and "<em>" not in text


def test_zero_featured_prints_no_featured_label(cfg: Config, db: Store) -> None:
    _, html, text = deliver(cfg, db, [make_pub(n, content_type="Commentary") for n in range(3)])
    assert "Featured" not in html and "FEATURED" not in text
    assert "== Commentary ==" in text and "Acceptance item 2" in html


def test_an_editors_note_heads_the_next_issue_only(cfg: Config, db: Store, project: Path) -> None:
    note = "A note from the editor: we are off next week & back in December."
    run_ingest(cfg, db, NOW)
    add_subscriber(db, "reader@example.com", NOW, confirmed=True)
    db.set_setting("digest.next_note", note)
    first = send_digest(cfg, db, NOW)
    (raw,) = raw_messages(cfg)
    html, text = bodies(parse(raw))
    assert str(escape(note)) in html and html.index(str(escape(note))) < html.index("Featured &middot;")
    assert text.index(note) < text.index("FEATURED:")
    assert db.sent_issues()[0][:3] == (first.issue_id, NOW, note) and db.setting("digest.next_note") is None

    write_md(project, "next-week", "Next week's piece", topics=("security-cooperation",))
    run_ingest(cfg, db, LATER)
    second = send_digest(cfg, db, LATER)
    assert second.sent == 1 and second.issue_id != first.issue_id
    (later,) = [m for m in map(parse, raw_messages(cfg)) if second.issue_id in m["Message-ID"]]
    html2, text2 = bodies(later)
    assert "Next week&#39;s piece" in html2 and "off next week" not in html2 and "off next week" not in text2
    assert db.sent_issues()[0][:3] == (second.issue_id, LATER, "")


# -- 5. template errors send nothing --------------------------------------------------------------------


@pytest.mark.parametrize("breakage, line", [("jinja", 10), ("mjml", None)])
def test_a_broken_template_sends_nothing_and_starts_no_issue(cfg: Config, db: Store, project: Path, breakage: str, line: int | None) -> None:
    tpl = project / "templates" / "email" / "digest.mjml.j2"
    source = tpl.read_text(encoding="utf-8")
    if breakage == "jinja":
        lines = source.splitlines()
        lines.insert(9, "{% for %}")  # an unclosed, empty for on line 10
        source = "\n".join(lines) + "\n"
    else:
        source = source.replace("</mj-body>", "")
    tpl.write_text(source, encoding="utf-8")
    run_ingest(cfg, db, NOW)
    add_subscriber(db, "reader@example.com", NOW, confirmed=True)

    with pytest.raises(TemplateError) as err:
        send_digest(cfg, db, NOW)
    assert Path(err.value.template).name == "digest.mjml.j2" and err.value.line == line
    if breakage == "mjml":
        assert "MJML" in str(err.value)
    outbox = cfg.path(cfg.delivery.outbox_dir)
    assert not outbox.exists() or not raw_messages(cfg)
    assert db.open_issue() is None and db.issue_ids() == []


# -- 6. the archive ----------------------------------------------------------------------------------------


def test_sent_issues_are_archived_with_an_index_and_a_feed(cfg: Config, db: Store, project: Path) -> None:
    digests = cfg.path(cfg.site.public_dir) / "digests"
    run_ingest(cfg, db, NOW)
    add_subscriber(db, "reader@example.com", NOW, confirmed=True)
    sent = [send_digest(cfg, db, NOW).issue_id]
    write_md(project, "next-week", "Next week's piece", topics=("security-cooperation",))
    run_ingest(cfg, db, LATER)
    sent.append(send_digest(cfg, db, LATER).issue_id)
    assert len(set(sent)) == 2

    index = lxml.html.fromstring((digests / "index.html").read_text(encoding="utf-8"))
    hrefs = {a.get("href") for a in index.iter("a")}
    for issue_id in sent:
        copy = digests / f"{issue_id}.html"
        assert copy.is_file() and f"{cfg.site.base_url}/digests/{issue_id}.html" in hrefs
        page = copy.read_text(encoding="utf-8")
        assert not re.search(r"slot-[0-9a-f]{32}-", page) and "reader@example.com" not in page

    feed = feedparser.parse((digests / "feed.atom").read_bytes())
    assert not feed.bozo, feed.get("bozo_exception")
    assert len(feed.entries) == len(db.sent_issues()) == 2
    assert [e.link for e in feed.entries] == [f"http://127.0.0.1:8000/digests/{i}.html" for i in reversed(sent)]
