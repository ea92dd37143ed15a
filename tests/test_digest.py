"""Selecting and rendering an issue."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from publisher.config import Config
from publisher.digest import Renderer, issue_id_for, select_issue
from publisher.errors import TemplateError
from publisher.models import Publication

from .conftest import NOW


def pub(n: int, content_type: str = "Commentary", **kw: object) -> Publication:
    when = datetime(2024, 3, 1, tzinfo=timezone.utc) + timedelta(days=n)
    p = Publication(id=f"p{n}", url=f"http://127.0.0.1:8000/p/{n}", title=f"Title {n}", summary=f"Summary {n}",
                    content_type=content_type, published_at=when, updated_at=when, topics=("t",))
    return replace(p, **kw)  # type: ignore[arg-type]


ORDER = ("Commentary", "Research Brief", "Report", "Multimedia")


def test_featured_first_by_rank_then_groups_in_type_order_newest_first() -> None:
    pubs = [pub(1, "Multimedia"), pub(2), pub(3, featured=True), pub(4, featured=True, featured_rank=1),
            pub(5, "Research Brief"), pub(6, "Podcast"), pub(7)]
    issue = select_issue("2026-W48", pubs, NOW, type_order=ORDER, max_items=40)
    assert [p.id for p in issue.featured] == ["p4", "p3"]  # ranked before unranked, even though older
    assert [(name, [p.id for p in items]) for name, items in issue.groups] == [
        ("Commentary", ["p7", "p2"]), ("Research Brief", ["p5"]), ("Multimedia", ["p1"]), ("Podcast", ["p6"])]
    assert issue.more_count == 0


def test_cap_counts_the_rest() -> None:
    issue = select_issue("x", [pub(n) for n in range(10)], NOW, type_order=ORDER, max_items=4)
    assert len(issue.publications) == 4 and issue.more_count == 6


def test_topic_variant_keeps_only_those_topics() -> None:
    pubs = [pub(1, topics=("a",)), pub(2, topics=("b",)), pub(3, topics=("a", "b"))]
    issue = select_issue("x", pubs, NOW, type_order=ORDER, max_items=40, topics=("a",))
    assert [p.id for p in issue.publications] == ["p3", "p1"]


def test_issue_ids_are_iso_weeks_in_the_site_zone() -> None:
    sunday_late_utc = datetime(2026, 11, 29, 23, 30, tzinfo=timezone.utc)
    assert issue_id_for(sunday_late_utc, "UTC") == "2026-W48"
    assert issue_id_for(sunday_late_utc, "Europe/Berlin") == "2026-W49"  # already Monday there
    assert issue_id_for(sunday_late_utc, "UTC", taken=["2026-W48", "2026-W48-2"]) == "2026-W48-3"


def test_render_html_and_text_from_their_own_templates(cfg: Config) -> None:
    pubs = [pub(1, featured=True, featured_rank=1, summary="<script>alert(1)</script> & more"), pub(2, "Report")]
    rendered = Renderer(cfg).render(select_issue("2026-W48", pubs, NOW, type_order=ORDER, max_items=40))
    assert rendered.html.startswith("<!doctype html>") and 'lang="en"' in rendered.html
    assert "alert(1)" not in rendered.html and "alert(1)" not in rendered.text  # markup from a source is dropped
    assert "&amp; more" in rendered.html and "& more" in rendered.text  # and text stays text
    assert "FEATURED: Title 1" in rendered.text and "== Report ==" in rendered.text
    assert rendered.subject == "Publisher Sample Institute weekly: November 27, 2026"
    html, text = rendered.personalise({"unsubscribe_url": "https://x/u?a=1&b=2", "preferences_url": "https://x/p", "email": "r@example.com"})
    assert 'href="https://x/u?a=1&amp;b=2"' in html and "Unsubscribe: https://x/u?a=1&b=2" in text


def test_dates_are_localised(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    german = replace(cfg, site=replace(cfg.site, language="de"))
    rendered = Renderer(german).render(select_issue("x", [pub(1)], NOW, type_order=ORDER, max_items=40))
    assert "27. November 2026" in rendered.text


def test_template_syntax_error_names_file_and_line(cfg: Config, project: Path) -> None:
    tpl = project / "templates" / "email" / "digest.txt.j2"
    lines = tpl.read_text(encoding="utf-8").splitlines()
    lines[3] = "{% if %}"
    tpl.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TemplateError) as err:
        Renderer(cfg).render(select_issue("x", [pub(1)], NOW, type_order=ORDER, max_items=40))
    assert err.value.template.endswith("digest.txt.j2") and err.value.line == 4


def test_undefined_variable_names_file_and_line(cfg: Config, project: Path) -> None:
    tpl = project / "templates" / "email" / "digest.mjml.j2"
    lines = tpl.read_text(encoding="utf-8").splitlines()
    lines.insert(5, "{{ no_such_thing }}")
    tpl.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TemplateError, match="no_such_thing") as err:
        Renderer(cfg).render(select_issue("x", [pub(1)], NOW, type_order=ORDER, max_items=40))
    assert err.value.line == 6


def test_mjml_error_names_the_template(cfg: Config, project: Path) -> None:
    tpl = project / "templates" / "email" / "digest.mjml.j2"
    tpl.write_text(tpl.read_text(encoding="utf-8").replace("</mj-body>", ""), encoding="utf-8")
    with pytest.raises(TemplateError, match="digest.mjml.j2.*MJML"):
        Renderer(cfg).render(select_issue("x", [pub(1)], NOW, type_order=ORDER, max_items=40))
