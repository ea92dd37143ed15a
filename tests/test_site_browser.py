"""The readers' site in a real browser, as a reader meets it: built by `publisher run --once` on the sample content,
served by `publisher serve`, looked at in Debian's Chromium (Playwright). axe-core (Deque's engine, the axe.min.js
that axe-playwright-python ships) checks WCAG 2.1 AA; Pagefind's index is searched for real.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .test_delivery import free_port
from .test_delivery_faults import PUBLISHER, env_for
from .test_first_hour import run_ok

PUBLICATION = "/publications/2024-04-16-gray-zone-aggression-south-china-sea-rule-of-law/"
PAGES = {"home": "/", "topic": "/topics/security-cooperation/", "publication": PUBLICATION, "archive": "/digests/"}
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def axe_script() -> str:
    try:
        import axe_playwright_python
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI is set but axe-playwright-python (axe-core) is not installed: pip install -e '.[test]'")
        pytest.skip("axe-playwright-python (axe-core) is not installed: pip install -e '.[test]'")
    return (Path(axe_playwright_python.__file__).with_name("axe.min.js")).read_text(encoding="utf-8")


def sample_project(project: Path, **settings: str) -> dict[str, str]:
    """The repository's config.toml, content/ and templates/ copied into ``project``; the environment to run it with:
    base_url on a free port (where `publisher serve` will answer, as an operator sets it), and ``settings``."""
    import shutil

    from .conftest import REPO

    for name in ("content", "templates"):
        shutil.copytree(REPO / name, project / name)
    shutil.copy(REPO / "config.toml", project / "config.toml")
    port = free_port()
    return env_for(PUBLISHER_SITE__BASE_URL=f"http://127.0.0.1:{port}", PUBLISHER_WEB__PORT=str(port), **settings)


@contextmanager
def served(project: Path, env: dict[str, str]) -> Iterator[str]:
    """`publisher serve` over the project; its base URL once it answers."""
    base = env["PUBLISHER_SITE__BASE_URL"]
    with (project / "serve.log").open("w") as log:
        server = subprocess.Popen([*PUBLISHER, "serve"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (project / "serve.log").read_text()
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """The sample project built by `publisher run --once` (a first digest sent to the outbox) and served by
    `publisher serve` on a free port."""
    project = tmp_path_factory.mktemp("site")
    env = sample_project(project)
    first = run_ok(project, "run", "--once", env=env)
    assert "search on:" in first.stdout, first.stdout  # Pagefind is a test dependency: the index is built
    with served(project, env) as base:
        yield base, project, env


def open_page(browser: Any, url: str, width: int = 1280, **options: Any) -> Any:
    page = browser.new_page(viewport={"width": width, "height": 900}, **options)
    page.goto(url, wait_until="load")
    return page


@pytest.mark.parametrize("width", [1280, 375])
@pytest.mark.parametrize("name", list(PAGES))
def test_axe_core_finds_no_wcag_21_aa_violation(browser: Any, site: tuple[str, Path, dict[str, str]], name: str, width: int) -> None:
    base, _, _ = site
    page = open_page(browser, base + PAGES[name], width, bypass_csp=True)  # the policy forbids inline scripts: axe is injected
    try:
        page.add_script_tag(content=axe_script())
        result = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", WCAG_21_AA)
        violations = [(v["id"], v["help"], [n["html"][:120] for n in v["nodes"][:3]]) for v in result["violations"]]
        assert violations == [], violations
        assert len(result["passes"]) > 15  # it ran: color-contrast, image-alt, label, link-name, html-has-lang...
    finally:
        page.close()


@pytest.mark.parametrize("name", [*PAGES, "topics", "search", "subscribe"])
def test_no_page_scrolls_sideways_on_a_375_px_phone(browser: Any, site: tuple[str, Path, dict[str, str]], name: str) -> None:
    base, _, _ = site
    path = {**PAGES, "topics": "/topics/", "search": "/search/", "subscribe": "/subscribe"}[name]
    page = open_page(browser, base + path, 375)
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        wide = page.evaluate("[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 375.5).map(e => e.outerHTML.slice(0, 80))")
        assert wide == []
    finally:
        page.close()


def test_a_topic_page_weighs_under_100_kb_before_images(browser: Any, site: tuple[str, Path, dict[str, str]]) -> None:
    base, _, _ = site
    responses: list[Any] = []
    page = browser.new_page()
    page.on("response", lambda r: responses.append(r))
    try:
        page.goto(base + PAGES["topic"], wait_until="load")
        sizes = {r.url: len(r.body()) for r in responses if r.request.resource_type in ("document", "stylesheet", "script", "font")}
        assert len(sizes) == 2 and sum(sizes.values()) < 100_000, sizes  # the page and its one stylesheet, no script
    finally:
        page.close()


def test_featured_first_then_the_list_with_images_captions_and_credits(browser: Any, site: tuple[str, Path, dict[str, str]]) -> None:
    base, _, _ = site
    page = open_page(browser, base + PAGES["topic"])
    try:
        headings = page.locator("main h2").all_inner_texts()
        assert headings[:2] == ["Featured", "Explore Security Cooperation"]
        featured = page.locator("section.featured h3").all_inner_texts()
        assert featured == ["Yes to Striking Iranian-Backed Militants", "From Forward Presence to Forward Defense: NATO's Defense of the Baltics"]
        first = page.locator("section.list article").first
        figure = first.locator("figure")
        figure.scroll_into_view_if_needed()
        first.locator("img").evaluate("img => img.decode()")  # loaded and shown, not a broken image
        assert first.locator("img").evaluate("img => img.naturalWidth") > 0 and first.locator("img").get_attribute("alt")
        assert "Photo: Mass Communication Specialist 2nd Class Kevin J. Steinberg/U.S. Navy" in figure.locator("figcaption").inner_text()
        assert first.locator(".kind").inner_text().lower() == "commentary" and first.locator("time").inner_text() == "Apr 16, 2024"
        first.locator("h3 a").click()
        page.wait_for_load_state()
        assert page.url == base + PUBLICATION and page.locator("h1").inner_text().startswith("Persistent Gray Zone Aggression")
        page.get_by_role("link", name="Security Cooperation").last.click()  # the publication's topic link goes back
        page.wait_for_load_state()
        assert page.url == base + PAGES["topic"]
    finally:
        page.close()


def test_signing_up_from_a_topic_page_ends_with_that_topic_chosen(browser: Any, site: tuple[str, Path, dict[str, str]]) -> None:
    """Without JavaScript, as a reader with it turned off: the page's form, the email, the confirm button."""
    base, project, env = site
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(base + PAGES["topic"], wait_until="load")
        signup = page.locator("aside.signup")
        assert signup.get_by_label("Security Cooperation only").is_checked()  # the page's topic, already ticked
        signup.get_by_label("Email address").fill("topic.reader@example.net")
        signup.get_by_role("button", name="Subscribe").click()
        page.wait_for_load_state()
        assert page.get_by_role("heading", name="Check your inbox").is_visible(), page.content()
        link = confirmation_link(project, "topic.reader@example.net")
        assert link.startswith(base + "/confirm/"), link
        page.goto(link, wait_until="load")
        page.get_by_role("button", name="Confirm my subscription").click()
        page.wait_for_load_state()
        assert page.get_by_role("heading", name="You are subscribed").is_visible()
    finally:
        context.close()
    shown = json.loads(run_ok(project, "subscribers", "show", "topic.reader@example.net", env=env).stdout)
    assert shown["status"] == "active" and shown["topics"] == ["security-cooperation"], shown


def confirmation_link(project: Path, address: str, timeout: float = 30) -> str:
    """The confirm link of the mail the sign-up sender wrote to the outbox for ``address``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (project / "var" / "outbox" / "new").iterdir():
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if msg["To"] and address in str(msg["To"]) and "confirm" in str(msg["Subject"]).lower():
                body = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
                return re.search(r"https?://\S+/confirm/\S+", body).group(0)  # type: ignore[union-attr]
        time.sleep(0.3)
    raise AssertionError(f"no confirmation mail for {address} in the outbox")


def test_a_static_page_form_from_another_site_is_refused(site: tuple[str, Path, dict[str, str]]) -> None:
    """The page's form carries no token (a static file cannot): the browser's Sec-Fetch-Site or Origin vouches for it."""
    import requests

    base, _, _ = site
    form = {"email": "forged@example.net", "topics": "security-cooperation", "from_page": "1"}
    cross = requests.post(base + "/subscribe", data=form, headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, timeout=10)
    other = requests.post(base + "/subscribe", data=form, headers={"Origin": "https://evil.example"}, timeout=10)
    bare = requests.post(base + "/subscribe", data=form, timeout=10)  # an old browser, or a script: the form comes back to press again
    assert [cross.status_code, other.status_code, bare.status_code] == [400, 400, 400]
    assert "One more step" in bare.text and 'value="security-cooperation" checked' in bare.text and 'name="csrf"' in bare.text
    same = requests.post(base + "/subscribe", data=form, headers={"Origin": base}, timeout=10)
    assert same.status_code == 200 and "Check your inbox" in same.text


def test_pagefind_finds_a_publication_from_the_search_page(browser: Any, site: tuple[str, Path, dict[str, str]]) -> None:
    base, _, _ = site
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(base + "/search/", wait_until="load")
        box = page.locator(".pagefind-ui__search-input")
        box.fill("Baltics")
        result = page.locator(".pagefind-ui__result-link").first
        result.wait_for(timeout=15_000)
        assert "Forward Presence to Forward Defense" in result.inner_text()
        assert result.get_attribute("href").endswith("/publications/2024-02-14-forward-presence-to-forward-defense-nato-baltics/")
        assert errors == []  # the search page's policy lets Pagefind's script and WebAssembly run, nothing else
    finally:
        page.close()


def test_the_digest_archive_lists_the_issue_and_its_page_links_back(browser: Any, site: tuple[str, Path, dict[str, str]]) -> None:
    base, _, _ = site
    page = open_page(browser, base + "/digests/")
    try:
        issue = page.locator("ol.issues a").first
        issue.click()
        page.wait_for_load_state()
        assert re.search(r"/digests/\d{4}-W\d{2}\.html$", page.url)
        nav = page.get_by_role("navigation", name="Digest archive")
        assert nav.get_by_role("link", name="All issues").is_visible()
        nav.get_by_role("link", name="All issues").click()
        page.wait_for_load_state()
        assert page.url == base + "/digests/"
    finally:
        page.close()


def test_pagination_and_the_archive_links_walked_in_the_browser(browser: Any, tmp_path: Path) -> None:
    """A site with [site].page_size = 5 (the sample's 22 publications: a front page and three archived pages) and two
    issues sent (`run --once`, then a new publication and `digest send`): a reader walks Older to the end and Newer back
    to the front, and from the newer issue to the previous one and back."""
    from .test_site import NEW_POST

    env = sample_project(tmp_path, PUBLISHER_SITE__PAGE_SIZE="5")
    run_ok(tmp_path, "run", "--once", env=env)
    (tmp_path / "content" / "publications" / "2026-11-30-arctic.md").write_text(NEW_POST, encoding="utf-8")
    run_ok(tmp_path, "ingest", env=env)
    second = run_ok(tmp_path, "digest", "send", env=env).stdout
    issues = re.findall(r"digest (\d{4}-W\d{2}(?:-\d+)?): 3 sent", second)
    assert issues, second
    run_ok(tmp_path, "feeds", "build", env=env)
    with served(tmp_path, env) as base:
        page = browser.new_page()
        try:
            page.goto(base + PAGES["topic"], wait_until="load")
            seen = page.locator("section.list h3").all_inner_texts()
            while page.get_by_role("link", name="Older").count():
                page.get_by_role("link", name="Older").click()
                page.wait_for_load_state()
                seen += page.locator("section.list h3").all_inner_texts()
            assert page.url == base + PAGES["topic"] + "page/1/" and len(seen) == 23 == len(set(seen))  # each once, to the oldest
            assert seen[0] == "A New Look at Arctic Security"
            while "page/" in page.url:
                page.get_by_role("link", name="Newer").click()
                page.wait_for_load_state()
                if page.url.endswith("/page/4/"):  # the newest archived page's Newer: a page that forwards to the front
                    page.wait_for_url(base + PAGES["topic"])
            assert page.url == base + PAGES["topic"]
            page.goto(f"{base}/digests/{issues[0]}.html", wait_until="load")
            nav = page.get_by_role("navigation", name="Digest archive")
            nav.get_by_role("link", name=re.compile("Previous issue")).click()
            page.wait_for_load_state()
            older = page.url
            assert older != f"{base}/digests/{issues[0]}.html" and older.endswith(".html")
            page.get_by_role("navigation", name="Digest archive").get_by_role("link", name=re.compile("Next issue")).click()
            page.wait_for_load_state()
            assert page.url == f"{base}/digests/{issues[0]}.html"
        finally:
            page.close()
