"""publisher/sources/files.py (the content/ folder) and publisher/ingest.py (into a real store)."""

from __future__ import annotations

import os
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from publisher.config import Config, load_config
from publisher.errors import ContentFileError, SourceError
from publisher.ingest import build_sources, ingest
from publisher.models import Publication
from publisher.sources.files import FilesSource, parse_front_matter
from publisher.store import Store

from .conftest import NOW, REPO, TEST_SECRET_KEY

BASE = "http://127.0.0.1:8000"
SEED = REPO.parent / "shared" / "seed" / "topic-page.txt"
FEATURED = [
    (1, "Yes to Striking Iranian-Backed Militants"),
    (2, "From Forward Presence to Forward Defense: NATO's Defense of the Baltics"),
]
GOOD = '+++\ntitle = "Good"\ndate = 2024-03-01\ncontent_type = "Commentary"\n+++\nA good body.\n'


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def files(folder: Path, tz: str = "UTC") -> FilesSource:
    return FilesSource("content", folder, BASE, tz)


def only(folder: Path, tz: str = "UTC") -> Publication:
    result = files(folder, tz).fetch()
    assert result.errors == []
    [pub] = result.publications
    return pub


def seed_items() -> list[tuple[str, str, str, bool]]:
    """(title, 'Feb 26, 2024', content type, has a photo) for each item on the seed topic page."""
    if not SEED.is_file():
        if os.environ.get("CI"):  # CI has ../shared beside the clone: there the check must run
            pytest.fail(f"CI is set but the seed page is not at {SEED}")
        pytest.skip(f"seed page not found at {SEED} (it lives in ../shared next to the repository)")
    items, item = [], None
    for line in SEED.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("•"):
            item = [text.lstrip("•").strip()]
        elif item is not None and text:
            item.append(text)
            if re.fullmatch(r"[A-Z][a-z]{2} \d{1,2}, \d{4}", text):  # the date closes an item
                # [photo caption,] type, title, summary, date; a photo-less item repeats its type in the bullet
                items.append((item[-3], item[-1], item[-4], len(item) == 5 and item[0] != item[1]))
                item = None
    return items


# -- the shipped sample content ----------------------------------------------------------------


@pytest.fixture
def sample(cfg: Config):
    [source] = build_sources(cfg)
    return source.fetch()


def test_sample_content_reads_cleanly(sample) -> None:
    assert sample.errors == []
    assert sample.warnings == []
    assert len(sample.publications) == 22
    assert len({p.id for p in sample.publications}) == 22


def test_sample_content_matches_the_seed_page(sample) -> None:
    expected = Counter((title, day, kind) for title, day, kind, _ in seed_items())
    assert sum(expected.values()) == 22
    got = Counter((p.title, f"{p.published_at:%b} {p.published_at.day}, {p.published_at.year}", p.content_type) for p in sample.publications)
    assert got == expected
    with_photo = {title for title, _, _, photo in seed_items() if photo}
    assert {p.title for p in sample.publications if p.image} == with_photo


def test_sample_content_has_two_featured_publications(sample) -> None:
    featured = sorted((p.featured_rank, p.title) for p in sample.publications if p.featured)
    assert featured == FEATURED


def test_sample_content_has_one_topic(sample) -> None:
    [topic] = sample.topics
    assert (topic.slug, topic.name) == ("security-cooperation", "Security Cooperation")
    assert topic.description.strip()
    assert all(p.topics == ("security-cooperation",) for p in sample.publications)


def test_sample_images_exist_and_have_alt_text(sample, project: Path) -> None:
    images = [p.image for p in sample.publications if p.image]
    assert images
    for image in images:
        assert image.url.startswith(f"{BASE}/media/")
        assert (project / "content" / image.url.removeprefix(f"{BASE}/media/")).is_file(), image.url
        assert image.alt.strip(), image.url


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_sample_dates_are_distinct_instants_on_the_seed_days_in_any_site_timezone(project: Path, tz: str) -> None:
    """Distinct times, so no two feed entries share atom:updated; the calendar day is the seed page's everywhere."""
    cfg = load_config(project / "config.toml", env={"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY, "PUBLISHER_SITE__TIMEZONE": tz})
    [source] = build_sources(cfg)
    pubs = source.fetch().publications
    assert len({p.published_at for p in pubs}) == len(pubs) == 22
    utc_days = {p.title: p.published_at.astimezone(timezone.utc).date() for p in pubs}
    for pub in pubs:
        assert pub.published_at.utcoffset() is not None
        assert pub.published_at.astimezone(ZoneInfo(tz)).date() == utc_days[pub.title]
        assert pub.updated_at >= pub.published_at


def test_a_day_only_date_is_midnight_in_the_site_timezone(tmp_path: Path) -> None:
    write(tmp_path, "a.md", GOOD)
    [pub] = FilesSource("content", tmp_path, BASE, "America/New_York").fetch().publications
    assert pub.published_at == datetime(2024, 3, 1, tzinfo=ZoneInfo("America/New_York"))


def test_a_missing_date_is_refused(tmp_path: Path) -> None:  # content/README.md: date is required
    write(tmp_path, "a.md", '+++\ntitle = "Undated"\ncontent_type = "Report"\n+++\n')
    result = FilesSource("content", tmp_path, BASE, "UTC").fetch()
    [err] = result.errors
    assert result.publications == [] and (err.line, err.location) == (1, "a.md:1")
    assert err.reason.startswith("missing required key 'date'; add date = ")


# -- front matter formats --------------------------------------------------------------------


def test_yaml_front_matter(tmp_path: Path) -> None:
    write(tmp_path, "yaml.md", "---\ntitle: From YAML\ndate: 2024-03-01\ncontent_type: Report\n"
                               "topics: [security-cooperation]\nauthors: Ann Author\nfeatured: true\n---\nBody.\n")
    pub = only(tmp_path, "Europe/Berlin")
    assert (pub.title, pub.content_type, pub.topics, pub.authors, pub.featured) == (
        "From YAML", "Report", ("security-cooperation",), ("Ann Author",), True)
    assert pub.published_at == datetime(2024, 3, 1, tzinfo=ZoneInfo("Europe/Berlin"))
    assert pub.id == "yaml"
    assert pub.url == f"{BASE}/publications/yaml/"


@pytest.mark.parametrize("fence", ["---", "+++"])
def test_datetime_with_an_offset_keeps_its_instant(tmp_path: Path, fence: str) -> None:
    sep = ":" if fence == "---" else " ="
    write(tmp_path, "a.md", f'{fence}\ntitle{sep} "A"\ndate{sep} 2024-02-26T09:30:00+01:00\ncontent_type{sep} "Commentary"\n{fence}\n')
    pub = only(tmp_path, "America/New_York")
    assert pub.published_at == datetime(2024, 2, 26, 8, 30, tzinfo=timezone.utc)
    assert pub.published_at.utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize("fence", ["---", "+++"])
def test_naive_datetime_is_read_in_the_site_timezone(tmp_path: Path, fence: str) -> None:
    sep = ":" if fence == "---" else " ="
    write(tmp_path, "a.md", f'{fence}\ntitle{sep} "A"\ndate{sep} 2024-02-26T09:30:00\ncontent_type{sep} "Commentary"\n{fence}\n')
    pub = only(tmp_path, "America/New_York")
    assert pub.published_at == datetime(2024, 2, 26, 9, 30, tzinfo=ZoneInfo("America/New_York"))
    assert pub.published_at == datetime(2024, 2, 26, 14, 30, tzinfo=timezone.utc)


def test_parse_front_matter_strips_a_bom_and_returns_the_body(tmp_path: Path) -> None:
    fm = parse_front_matter("content", write(tmp_path, "a.md", "\ufeff" + GOOD))
    assert fm.data["title"] == "Good"
    assert fm.body == "A good body."
    assert fm.first_line == 2


# -- bad files -------------------------------------------------------------------------------

BAD_FILES = {
    "invalid TOML": ('+++\ntitle = "Bad"\ndate = 2024-03-01\ncontent_type = = "x"\n+++\n', 4, "invalid TOML front matter"),
    "invalid TOML, last line": ('+++\ntitle = "Bad"\ndate = 2024-03-01\ncontent_type =\n+++\n', 4, "invalid TOML front matter"),
    "invalid YAML": ("---\ntitle: Bad\ndate: 2024-03-01\ncontent_type: Commentary: extra\n---\n", 4, "invalid YAML front matter"),
    "no front matter": ("# Just a heading\n\nNo front matter here.\n", 1, "no front matter"),
    "unterminated": ('+++\ntitle = "Bad"\ndate = 2024-03-01\n\nThe body.\n', 1, "never closed"),
    "missing title": ('+++\ndate = 2024-03-01\ncontent_type = "Commentary"\n+++\n', 1, "missing required key 'title'"),
    "featured not a bool": ('+++\ntitle = "Bad"\ndate = 2024-03-01\ncontent_type = "Commentary"\nfeatured = "yes"\n+++\n',
                            5, "featured must be true or false"),
    "bad date": ('+++\ntitle = "Bad"\ndate = "26 Feb 2024"\ncontent_type = "Commentary"\n+++\n', 3, "is not a date"),
    "unknown key": ('+++\ntitle = "Bad"\ndate = 2024-03-01\ncontent_type = "Commentary"\ntags = ["x"]\n+++\n',
                    5, "unknown key 'tags'"),
    "not UTF-8": (b'+++\ntitle = "Caf\xe9"\ndate = 2024-03-01\ncontent_type = "Commentary"\n+++\n', None, "not UTF-8"),
}


@pytest.mark.parametrize("text, line, reason", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_a_bad_file_is_reported_and_its_neighbour_still_read(tmp_path: Path, text: str | bytes, line: int | None, reason: str) -> None:
    write(tmp_path, "a-good.md", GOOD)
    bad = write(tmp_path, "b-bad.md", text)
    result = files(tmp_path).fetch()
    [err] = result.errors
    assert isinstance(err, ContentFileError)
    assert err.path == str(bad)
    assert err.line == line
    assert reason in err.reason
    assert str(err).startswith(f"source 'content': b-bad.md:{line}: " if line else "source 'content': b-bad.md: ")  # named from the folder
    assert [p.title for p in result.publications] == ["Good"]


def test_yaml_impossible_date_is_reported_not_raised(tmp_path: Path) -> None:
    write(tmp_path, "a-good.md", GOOD)
    bad = write(tmp_path, "b-bad.md", "---\ntitle: Bad\ndate: 2024-02-30\ncontent_type: Commentary\n---\n")
    result = files(tmp_path).fetch()
    assert [e.path for e in result.errors if isinstance(e, ContentFileError)] == [str(bad)]
    assert "day is out of range" in result.errors[0].reason
    assert [p.title for p in result.publications] == ["Good"]


def test_yaml_non_string_key_is_reported_not_raised(tmp_path: Path) -> None:
    write(tmp_path, "a-good.md", GOOD)
    bad = write(tmp_path, "b-bad.md", "---\ntitle: Bad\ndate: 2024-02-03\ncontent_type: Commentary\n2024: x\n---\n")
    result = files(tmp_path).fetch()
    assert [e.path for e in result.errors if isinstance(e, ContentFileError)] == [str(bad)]
    assert [p.title for p in result.publications] == ["Good"]


def test_missing_folder_is_one_error(tmp_path: Path) -> None:
    result = files(tmp_path / "nope").fetch()
    [err] = result.errors
    assert "folder not found" in str(err)
    assert result.publications == []


# -- Markdown bodies -------------------------------------------------------------------------


def test_markdown_body_is_rendered_and_raw_html_is_not_passed_through(tmp_path: Path) -> None:
    body = "## Key points\n\nSome **bold** text.\n\n<script>alert(1)</script>\n\nInline <b>tag</b>.\n"
    write(tmp_path, "a.md", GOOD.replace("A good body.\n", body))
    html = only(tmp_path).body_html
    assert "<h2>Key points</h2>" in html
    assert "<strong>bold</strong>" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>" not in html and "&lt;b&gt;tag&lt;/b&gt;" in html


# -- ingest into a real store ----------------------------------------------------------------


def test_ingest_sample_content_then_nothing_changes(cfg: Config, store: Store) -> None:
    first = ingest(build_sources(cfg), store, NOW)
    assert (len(first.new), first.updated, first.unchanged, first.errors) == (22, [], 0, [])
    assert first.topics_changed == ["security-cooperation"]
    assert store.count_publications() == 22
    assert all(p.first_seen_at == NOW for p in store.publications())

    second = ingest(build_sources(cfg), store, NOW + timedelta(hours=1))
    assert (second.new, second.updated, second.unchanged, second.topics_changed, second.errors) == ([], [], 22, [], [])
    assert not second.changed


def test_ingest_edited_title_is_an_update_and_first_seen_stays(cfg: Config, store: Store, project: Path) -> None:
    ingest(build_sources(cfg), store, NOW)
    path = project / "content" / "publications" / "2024-02-26-yes-to-striking-iranian-backed-militants.md"
    path.write_text(path.read_text(encoding="utf-8").replace(
        'title = "Yes to Striking Iranian-Backed Militants"', 'title = "Yes to Striking Militants"'), encoding="utf-8")

    report = ingest(build_sources(cfg), store, NOW + timedelta(days=1))
    pub_id = "publications/2024-02-26-yes-to-striking-iranian-backed-militants"
    assert (report.new, report.updated, report.unchanged) == ([], [pub_id], 21)
    [stored] = [p for p in store.publications() if p.id == pub_id]
    assert stored.title == "Yes to Striking Militants"
    assert stored.first_seen_at == NOW


def test_ingest_reports_a_broken_file_and_keeps_the_rest(cfg: Config, store: Store, project: Path) -> None:
    broken = write(project / "content" / "publications", "2024-05-01-broken.md", "+++\ntitle = \n+++\n")
    report = ingest(build_sources(cfg), store, NOW)
    [err] = report.errors
    assert isinstance(err, ContentFileError) and err.path == str(broken) and err.line == 2
    assert len(report.new) == 22
    assert store.count_publications() == 22


def test_ingest_keeps_the_first_of_two_files_with_the_same_id(tmp_path: Path, store: Store) -> None:
    folder = tmp_path / "content"
    write(folder, "a.md", GOOD.replace('title = "Good"', 'id = "same"\ntitle = "First"'))
    write(folder, "b.md", GOOD.replace('title = "Good"', 'id = "same"\ntitle = "Second"'))
    report = ingest([files(folder)], store, NOW)
    assert report.new == ["same"]
    [err] = report.errors
    assert isinstance(err, SourceError) and "duplicate id" in str(err) and "same" in str(err)
    assert [(p.id, p.title) for p in store.publications()] == [("same", "First")]


def test_a_file_name_with_spaces_quotes_or_a_newline_makes_a_well_formed_default_url(tmp_path: Path) -> None:
    write(tmp_path, 'a "quoted" name\nsecond line.md', GOOD)
    pub = only(tmp_path)
    assert pub.url == f"{BASE}/publications/a%20%22quoted%22%20name%0Asecond%20line/"
    assert not re.search(r"[\s\"<>]", pub.url)
