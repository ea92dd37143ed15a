"""The readers' site: the home page, a page per topic and per content type, a page per publication of content/,
the topics index, the digest archive, search, and one stylesheet; built from the store after the feeds.

Like the feeds, every page's bytes are a pure function of the store and the config, and :func:`write_atomic` leaves
an unchanged file alone: a rebuild of unchanged content writes nothing.

**Pagination is counted from the oldest publication**, so that a new one changes only the pages that show it. A
listing's archived pages (``page/1/`` the oldest) each hold exactly ``[site].page_size`` publications and never
change when something new arrives; its front page holds the rest, the newest, from page_size to twice that less one.
When the front page fills up, its oldest page_size become the next archived page. Each archived page's "newer" link
is always ``page/<k+1>/``: for the newest archived page that address is a small page that sends the reader on to the
front, replaced by the real page when it is archived, so no archived page is ever written again for a new link.

**Featured** publications (the editor's rank, then newest) are shown first on a listing's front page; the list below
still holds every publication in date order, so that featuring or unfeaturing one moves nothing between pages.

A publication that comes from content/ (its URL is under ``<base_url>/publications/``) gets a page of its own; one
from a remote source is linked to where it was published.

Pages carry a sign-up form that works without JavaScript: it posts to ``/subscribe`` (the double opt-in of
``publisher.web.pages``) with the page's topic ticked.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import babel
import jinja2
from babel.dates import format_date

from .config import Config
from .errors import TemplateError
from .feeds import MEDIA_TYPES, FeedSpec, absolute_url, feed_specs, feeds_url
from .feeds.content import body_html, plain_text, summary_html
from .fsutil import PathRefused, safe_join, write_atomic
from .models import Publication, Topic
from .store import Store
from .store.db import content_hash

log = logging.getLogger(__name__)
FORMAT_NAMES = {"rss": "RSS", "atom": "Atom", "json": "JSON Feed"}
OWN_FOLDERS = ("page", "topics", "types", "publications")  # under public/: only the site writes here; stale pages go
SEARCH_DIR = "pagefind"
PUBLICATIONS = "/publications/"


@dataclass
class SiteReport:
    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    files: int = 0  # pages and assets this build made (written or found unchanged)
    search: str = ""  # what became of the search index, for the run's summary


# -- what goes on the pages ------------------------------------------------------------------------------------------


def paginate(pubs: list[Publication], size: int) -> tuple[list[Publication], list[list[Publication]]]:
    """(front page, archived pages oldest first) of a newest-first list: see the module's docstring."""
    archived = max(len(pubs) // size - 1, 0)
    oldest_first = pubs[::-1]
    pages = [oldest_first[k * size:(k + 1) * size][::-1] for k in range(archived)]
    return oldest_first[archived * size:][::-1], pages


def own_page(cfg: Config, pub: Publication) -> str | None:
    """The site path of the publication's own page (``/publications/<name>/``), when it has one: those of content/
    whose URL is that page. A remote item that links there is not one of ours: it gets no page on our domain."""
    base = cfg.site.base_url.rstrip("/")
    source = cfg.sources.get(pub.source)
    if source is None or source.kind != "files" or not pub.url.startswith(base + PUBLICATIONS):
        return None
    rest = pub.url[len(base + PUBLICATIONS):]
    name = unquote(rest[:-1]) if rest.endswith("/") else ""
    if not name or "/" in name or name in (".", "..") or "?" in rest or "#" in rest:
        return None
    return PUBLICATIONS + name + "/"


def featured_first(pubs: Iterable[Publication]) -> list[Publication]:
    """The featured ones in the editor's order (rank, then newest)."""
    chosen = [p for p in pubs if p.featured]
    chosen.sort(key=lambda p: p.published, reverse=True)
    chosen.sort(key=lambda p: p.featured_rank if p.featured_rank is not None else 1 << 30)
    return chosen


class _Pages:
    """The Jinja environment, the site's context, and the rendering of each kind of page."""

    def __init__(self, cfg: Config, topics: list[Topic], specs: list[FeedSpec], search_on: bool) -> None:
        self.cfg = cfg
        self.base = cfg.site.base_url.rstrip("/")
        self.env = environment(str(cfg.path(cfg.site.templates_dir)))
        self.topics = {t.slug: t for t in topics}
        self.specs = specs
        self.search_on = search_on
        self._items: dict[str, tuple[Publication, dict[str, Any]]] = {}
        self.tz = ZoneInfo(cfg.site.timezone)
        self.common = {"site": cfg.site, "base": self.base, "root": site_root(cfg), "css_url": css_address(cfg),
                       "logo": absolute_url(cfg, cfg.site.logo) if cfg.site.logo else "", "search_on": search_on,
                       "icon": absolute_url(cfg, cfg.feeds.icon),
                       "all_feeds": self.feeds(specs[0]) if specs else []}

    def render(self, template: str, **context: Any) -> bytes:
        try:
            return self.env.get_template(template).render(**self.common, **context).encode("utf-8")
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(str(self.cfg.path(self.cfg.site.templates_dir) / str(exc)), None, "template not found; check [site].templates_dir") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(str(exc.filename or template), exc.lineno, exc.message or "syntax error") from None

    def feeds(self, spec: FeedSpec) -> list[dict[str, str]]:
        url = feeds_url(self.cfg)
        return [{"href": f"{url}/{spec.path}.{fmt}", "type": MEDIA_TYPES[fmt], "title": f"{spec.title} ({FORMAT_NAMES[fmt]})",
                 "format": FORMAT_NAMES[fmt]} for fmt in self.cfg.feeds.formats]

    def item(self, pub: Publication) -> dict[str, Any]:
        """What a listing shows of a publication: all text plain or sanitised here, escaped by the template. Made once
        a build: a publication is on the home page, its type's and each of its topics'."""
        made = self._items.get(pub.id)
        if made is None or made[0] is not pub:
            made = self._items[pub.id] = (pub, self._item(pub))
        return made[1]

    def _item(self, pub: Publication) -> dict[str, Any]:
        image = None
        if pub.image and web_url(pub.image.url):
            image = {"url": pub.image.url, "alt": plain_text(pub.image.alt), "caption": plain_text(pub.image.caption),
                     "credit": plain_text(pub.image.credit)}
        day = pub.published.astimezone(self.tz).date()
        return {"title": plain_text(pub.title) or "(untitled)", "url": pub.url if web_url(pub.url) else "#", "summary": summary_html(pub), "type": plain_text(pub.content_type),
                "date": _day(day, self.cfg.site.language), "datetime": day.isoformat(),
                "authors": [plain_text(a) for a in pub.authors if plain_text(a)], "image": image, "featured": pub.featured,
                "topics": [{"name": plain_text(self.topics[s].name), "url": f"{self.base}/topics/{s}/"} for s in pub.topics if s in self.topics]}

    def listing(self, spec: FeedSpec, pubs: list[Publication], number: int | None, archived: int, featured: list[Publication] | None = None) -> bytes:
        """The front page (``number`` None, with the listing's ``featured``) or archived page ``number`` of a listing
        with ``archived`` archived pages."""
        root = f"{self.base}{spec.page}"
        topic = self.topics.get(spec.topic) if spec.topic else None
        if number is None:
            canonical, older, newer = root, (f"{root}page/{archived}/" if archived else ""), ""
        else:
            canonical = f"{root}page/{number}/"
            older, newer = (f"{root}page/{number - 1}/" if number > 1 else ""), f"{root}page/{number + 1}/"
        title = spec.title if spec.path != "all" else self.cfg.site.name
        description = (topic.description if topic else "") or (self.cfg.site.description if spec.path == "all" else spec.description)
        kind = spec.title.split(": ", 1)[-1]  # "Research Brief" of "Publisher Sample Institute: Research Brief"
        heading = f"Explore {plain_text(topic.name)}" if topic else "Latest" if spec.path == "all" else f"All {kind}"
        return self.render("web/site/listing.html.j2", page_title=title if number is None else f"{title} (page {number})", heading=heading,
                           name=plain_text(topic.name) if topic else (self.cfg.site.name if spec.path == "all" else kind),
                           description=plain_text(description), canonical=canonical, feeds=self.feeds(spec),
                           featured=[self.item(p) for p in featured or ()] if number is None else [],
                           items=[self.item(p) for p in pubs], older=older, newer=newer, latest=root if number is not None else "",
                           topic=topic, number=number, og_type="website", og_image="")

    def publication(self, pub: Publication, path: str) -> bytes:
        item = self.item(pub)
        url = f"{self.base}{path}"
        ld: dict[str, Any] = {"@context": "https://schema.org", "@type": "Article", "headline": item["title"][:110], "url": url,
                              "mainEntityOfPage": url, "datePublished": pub.published.isoformat(), "dateModified": pub.updated.isoformat(),
                              "articleSection": item["type"], "publisher": {"@type": "Organization", "name": self.cfg.site.name}}
        if pub.summary:
            ld["description"] = plain_text(pub.summary)
        if item["authors"]:
            ld["author"] = [{"@type": "Person", "name": a} for a in item["authors"]]
        if item["image"]:
            ld["image"] = [item["image"]["url"]]
        if self.common["logo"]:
            ld["publisher"]["logo"] = {"@type": "ImageObject", "url": self.common["logo"]}
        ld["keywords"] = [t["name"] for t in item["topics"]]
        return self.render("web/site/publication.html.j2", page_title=item["title"], description=plain_text(pub.summary), canonical=url, pub=item,
                           body=body_html(pub), json_ld=script_json(ld), og_type="article", og_image=item["image"]["url"] if item["image"] else "",
                           topic=self.topics.get(pub.topics[0]) if pub.topics else None, feeds=self.common["all_feeds"], published_iso=pub.published.isoformat(),
                           modified_iso=pub.updated.isoformat())

    def topics_index(self) -> bytes:
        topics = [{"name": plain_text(t.name), "url": f"{self.base}/topics/{t.slug}/", "description": plain_text(t.description)}
                  for t in sorted(self.topics.values(), key=lambda t: plain_text(t.name).casefold()) if any(s.topic == t.slug for s in self.specs)]
        types = [{"name": s.title.split(": ", 1)[-1], "url": f"{self.base}{s.page}"} for s in self.specs if s.content_type is not None]
        return self.render("web/site/topics.html.j2", page_title=f"Topics · {self.cfg.site.name}", description=f"Every topic {self.cfg.site.name} covers.",
                           canonical=f"{self.base}/topics/", topics=topics, types=types, topic=None, feeds=self.common["all_feeds"], og_type="website", og_image="")

    def search(self) -> bytes:
        return self.render("web/site/search.html.j2", page_title=f"Search · {self.cfg.site.name}", description=f"Search {self.cfg.site.name}.",
                           canonical=f"{self.base}/search/", topic=None, feeds=self.common["all_feeds"], og_type="website", og_image="")

    def digests(self, issues: list[tuple[str, datetime, str, int]]) -> bytes:
        rows = [{"url": f"{self.base}/digests/{i}.html", "id": i, "date": format_date(sent.astimezone(self.tz).date(), "long",
                 locale=self.cfg.site.language.replace("-", "_")), "datetime": sent.astimezone(self.tz).date().isoformat(), "count": count,
                 "note": plain_text(note)} for i, sent, note, count in issues]
        feed = [{"href": f"{self.base}/digests/feed.atom", "type": MEDIA_TYPES["atom"], "title": f"{self.cfg.site.name}: digests (Atom)", "format": "Atom"}]
        return self.render("web/site/digests.html.j2", page_title=f"Past digests · {self.cfg.site.name}",
                           description=f"Every weekly digest {self.cfg.site.name} has sent.", canonical=f"{self.base}/digests/", issues=rows,
                           topic=None, feeds=feed, og_type="website", og_image="")

    def forward(self, target: str) -> bytes:
        return self.render("web/site/forward.html.j2", target=target)


@lru_cache(maxsize=16384)
def _day(day: date, language: str) -> str:
    """"Feb 26, 2024" in the site's language (Babel), once per day shown."""
    return format_date(day, "medium", locale=language.replace("-", "_"))


def web_url(url: str) -> bool:
    """http(s) only in an href or src (the sources check this too: a store from before, or a bug, is not trusted)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def listings(pubs: list[Publication], specs: list[FeedSpec]) -> list[list[Publication]]:
    """Each spec's publications, in the order given (newest first), in one pass: a publication goes to the home list,
    its type's and its topics' (not every spec asked of every publication: 500 topics x 100,000 publications)."""
    def key(spec: FeedSpec) -> tuple[str, str | None]:
        return ("topic", spec.topic) if spec.topic is not None else ("type", spec.content_type) if spec.content_type is not None else ("all", None)

    by_key: dict[tuple[str, str | None], list[Publication]] = {key(spec): [] for spec in specs}
    for pub in pubs:
        for where in (("all", None), ("type", pub.content_type), *(("topic", t) for t in dict.fromkeys(pub.topics))):
            held = by_key.get(where)
            if held is not None:
                held.append(pub)
    return [by_key[key(spec)] for spec in specs]


def script_json(value: Any) -> str:
    """JSON for a <script type="application/ld+json">: nothing in it can end the element or open a comment."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


@lru_cache(maxsize=8)
def environment(templates: str, html: bool = True) -> jinja2.Environment:
    """The pages' environment (autoescaped), or with ``html`` False the stylesheet's: CSS is not HTML, and escaping the
    quotes of a font list would break its rule (the values that go there are checked by the config instead)."""
    # auto_reload: an edited template is picked up by a long-running `publisher run`
    return jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=html, undefined=jinja2.StrictUndefined,
                              auto_reload=True, trim_blocks=True, lstrip_blocks=True)


def stylesheet(cfg: Config) -> bytes:
    """public/assets/site.css, from templates/web/site/site.css.j2 and the [site] colours and font (checked by the config)."""
    template = "web/site/site.css.j2"
    try:
        css = environment(str(cfg.path(cfg.site.templates_dir)), html=False).get_template(template).render(site=cfg.site)
    except jinja2.TemplateNotFound:
        raise TemplateError(str(cfg.path(cfg.site.templates_dir) / template), None, "template not found; check [site].templates_dir") from None
    return css.encode("utf-8")


def write_stylesheet(cfg: Config) -> bool:
    return write_atomic(cfg.path(cfg.site.public_dir) / "assets" / "site.css", stylesheet(cfg), durable=False)


# -- the build -------------------------------------------------------------------------------------------------------


def build_site(cfg: Config, store: Store, *, specs: list[FeedSpec] | None = None, topics: list[Topic] | None = None) -> SiteReport:
    """Write every page of the site; pages no longer built (a publication or topic gone) are removed."""
    topics = store.topics() if topics is None else topics
    specs = feed_specs(store, cfg, topics) if specs is None else specs
    public = cfg.path(cfg.site.public_dir)
    finder = search_engine()
    pages = _Pages(cfg, topics, specs, search_on=finder is not None)
    everything = store.publications()
    report = SiteReport()
    built: set[Path] = set()

    key = _build_key(cfg, pages, topics)
    hashes: dict[str, str] = {}

    def put(rel: str, data: bytes | Callable[[], bytes], inputs: Iterable[Any] | None = None) -> Path | None:
        """Write one file. With ``inputs`` (what the page is made of), a page whose stored mark says it was made from
        the same inputs by the same code, templates and config is not even rendered again."""
        try:
            path = safe_join(public, rel)
        except PathRefused as exc:  # a name from data leads out of public/: that page only is skipped
            log.error("site: not written: %s", exc)
            return None
        built.add(path)
        report.files += 1
        mark = _fingerprint(key, inputs) if inputs is not None else None
        if mark is not None and _marked_with(path, mark):
            return path
        page = data() if callable(data) else data
        if mark is not None:
            page = _with_mark(page, mark)
        if write_atomic(path, page, durable=False):  # rebuilt from the store
            report.written.append(path)
        return path

    report.files += 1
    if write_stylesheet(cfg):
        report.written.append(public / "assets" / "site.css")
    put("assets/search.js", SEARCH_JS.encode("utf-8"))
    for spec, listed in zip(specs, listings(everything, specs)):
        front, archived = paginate(listed, cfg.site.page_size)
        root = spec.page.strip("/")
        prefix = f"{root}/" if root else ""
        featured = featured_first(listed)
        put(f"{prefix}index.html", lambda: pages.listing(spec, front, None, len(archived), featured),
            (spec, None, len(archived), _held(front, hashes), _held(featured, hashes)))
        for number, chunk in enumerate(archived, start=1):
            put(f"{prefix}page/{number}/index.html", lambda chunk=chunk, number=number: pages.listing(spec, chunk, number, len(archived)),  # type: ignore[misc]
                (spec, number, len(archived), _held(chunk, hashes)))
        if archived:  # the newest archived page's "newer" link: on to the front page until it is archived too
            put(f"{prefix}page/{len(archived) + 1}/index.html", pages.forward(f"{pages.base}{spec.page}"))
    owners: dict[str, str] = {}
    for pub in everything:
        path = own_page(cfg, pub)
        if path is None:
            continue
        if path in owners:  # two files naming one url: the page would flip between them with each build
            log.error("site: %s has no page of its own: %s is %s's (give one of them another url)", pub.id, path, owners[path])
            continue
        owners[path] = pub.id
        put(path.strip("/") + "/index.html", lambda pub=pub, path=path: pages.publication(pub, path), (path, _held([pub], hashes)))  # type: ignore[misc]
    put("topics/index.html", pages.topics_index())
    put("search/index.html", pages.search())
    from .digest.archive import link_copies

    issues = store.sent_issues()
    put("digests/index.html", pages.digests(issues))
    report.written += link_copies(cfg, issues)
    report.removed = _remove_stale(public, built)
    changed_pages = any(p.name == "index.html" and p.parent.parent.name == "publications" for p in report.written + report.removed)
    report.search = _index(cfg, public, finder, changed_pages)
    return report


MARK = b"<!-- publisher page "


def _held(pubs: Iterable[Publication], hashes: dict[str, str]) -> list[tuple[Any, ...]]:
    """What a page shows of each publication, as fingerprint input: its content, its source, its fallback date.
    ``hashes``: the build's content hashes by id, each publication hashed once however many pages show it."""
    held = []
    for p in pubs:
        digest = hashes.get(p.id) or hashes.setdefault(p.id, content_hash(p))
        held.append((p.id, digest, p.source, p.first_seen_at.isoformat() if p.first_seen_at else None))
    return held


def _build_key(cfg: Config, pages: _Pages, topics: list[Topic]) -> str:
    """Everything every page depends on besides its publications: the config, the topics, the templates, this code."""
    digest = hashlib.sha256()
    templates = cfg.path(cfg.site.templates_dir) / "web"
    for part in (repr(cfg.site), repr(sorted((n, sc.kind) for n, sc in cfg.sources.items())), repr(cfg.feeds),
                 repr(sorted((k, v) for k, v in pages.common.items() if k != "site")), repr([(t.slug, t.name, t.description) for t in topics]),
                 repr([s for s in pages.specs])):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    for path in sorted(templates.rglob("*.j2")) if templates.is_dir() else ():
        digest.update(path.as_posix().encode("utf-8", "surrogateescape") + b"\0" + path.read_bytes() + b"\0")
    for module in (Path(__file__), Path(__file__).parent / "feeds" / "content.py"):
        digest.update(module.read_bytes())
    import nh3

    digest.update(f"{getattr(nh3, '__version__', '')}|{babel.__version__}|{jinja2.__version__}".encode())
    return digest.hexdigest()


def _fingerprint(key: str, inputs: Iterable[Any]) -> str:
    return hashlib.sha256(repr((key, inputs)).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _with_mark(page: bytes, mark: str) -> bytes:
    """The page with, after its doctype line, a comment holding the fingerprint of its inputs and a hash of its bytes."""
    head, _, rest = page.partition(b"\n")
    body = hashlib.sha256(head + b"\n" + rest).hexdigest()[:32]
    return head + b"\n" + MARK + mark.encode() + b" " + body.encode() + b" -->\n" + rest


def _marked_with(path: Path, mark: str) -> bool:
    """Whether the file is the page made from these inputs, untouched since: a page edited or cut short is made again."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    head, _, rest = data.partition(b"\n")
    line, _, rest = rest.partition(b"\n")
    expected = MARK + mark.encode() + b" "
    if not line.startswith(expected) or not line.endswith(b" -->"):
        return False
    return line[len(expected):-4].decode("ascii", "replace") == hashlib.sha256(head + b"\n" + rest).hexdigest()[:32]


def digest_index(cfg: Config, store: Store, issues: list[tuple[str, datetime, str, int]]) -> bytes:
    """The archive page /digests/ (as the site build writes it), for the send to write as soon as an issue is out."""
    topics = store.topics()
    return _Pages(cfg, topics, feed_specs(store, cfg, topics), search_on=search_engine() is not None).digests(issues)


def _remove_stale(public: Path, built: set[Path]) -> list[Path]:
    """The pages of the site's own folders that this build did not make: a publication, topic or page gone."""
    removed = []
    for folder in OWN_FOLDERS:
        top = public / folder
        if not top.is_dir() or top.is_symlink():
            continue
        # fwalk, and unlink by the folder's descriptor: a folder swapped for a symlink mid-walk cannot send the unlink
        # elsewhere; a symlink (folder or file) is never followed nor removed.
        for dirpath, dirnames, filenames, fd in os.fwalk(top, topdown=False, follow_symlinks=False):
            here = Path(dirpath)
            if "index.html" in filenames and here / "index.html" not in built:
                try:
                    if stat.S_ISREG(os.stat("index.html", dir_fd=fd, follow_symlinks=False).st_mode):
                        os.unlink("index.html", dir_fd=fd)
                        removed.append(here / "index.html")
                except FileNotFoundError:
                    pass
            for name in dirnames:
                try:
                    os.rmdir(name, dir_fd=fd)  # only when empty: a file someone put there stays
                except OSError:
                    pass
    return removed


# -- search (Pagefind) -----------------------------------------------------------------------------------------------


SEARCH_JS = """// Pagefind's search box on /search/ (https://pagefind.app); the page works without it, and says so.
window.addEventListener("DOMContentLoaded", function () {
  var box = document.getElementById("search");
  if (!box || typeof PagefindUI === "undefined") return;
  box.innerHTML = "";
  new PagefindUI({ element: "#search", showSubResults: false, showImages: false });
});
"""


def search_engine() -> list[str] | None:
    """The Pagefind command: `pagefind` on the PATH (npm), or the binary of the PyPI package pagefind_bin; None without."""
    found = shutil.which("pagefind")
    if found:
        return [found]
    try:
        import pagefind_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    binary = Path(pagefind_bin.__file__).with_name("pagefind")
    return [str(binary)] if binary.is_file() and os.access(binary, os.X_OK) else [sys.executable, "-m", "pagefind_bin"]


def _index(cfg: Config, public: Path, finder: list[str] | None, changed: bool) -> str:
    """Pagefind's index of the publication pages, in public/pagefind/: built in a temporary folder and copied over
    file by file, so that an unchanged index writes nothing and a reader never meets half of one."""
    if finder is None:
        return 'off: Pagefind is not installed (pip install "publisher[search]")'
    target = public / SEARCH_DIR
    if target.is_symlink() or (target.exists() and not target.resolve().is_relative_to(public.resolve())):
        log.error("search: %s is a symlink or leads out of %s: not written (remove it)", target, public)
        return f"error: {target} is a symlink; remove it"
    if not changed and (target / "pagefind.js").is_file():
        return "unchanged"
    with tempfile.TemporaryDirectory(prefix="pagefind-") as tmp:
        try:
            done = subprocess.run([*finder, "--site", str(public), "--glob", "publications/**/index.html", "--output-path", tmp],
                                  capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("search: Pagefind did not run: %s", exc)
            return f"error: Pagefind did not run ({exc}); the old index stays"
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            log.error("search: Pagefind failed (exit %d): %s", done.returncode, detail[0])
            return f"error: Pagefind failed ({detail[0]}); the old index stays"
        fresh = {p.relative_to(tmp) for p in Path(tmp).rglob("*") if p.is_file()}
        written = 0
        for rel in sorted(fresh):
            try:
                written += write_atomic(safe_join(target, rel.as_posix()), (Path(tmp) / rel).read_bytes(), durable=False)
            except PathRefused as exc:  # a symlink planted inside public/pagefind/
                log.error("search: not written: %s", exc)
    stale = [p for p in target.rglob("*") if p.is_file() and not p.is_symlink() and p.relative_to(target) not in fresh]
    for p in stale:
        p.unlink()
    counted = re.search(r"Indexed (\d+) page", done.stdout)
    return f"on: {counted.group(1) if counted else '?'} pages indexed, {written} files written"


def archive_nav(cfg: Config, issue_id: str, newer: str | None, older: str | None) -> str:
    """The links at the top of a sent issue's web copy: the previous issue, all of them, the next one."""
    base = cfg.site.base_url.rstrip("/")
    link = 'style="color:#0b5cad"'
    parts = []
    if older:
        parts.append(f'<a {link} rel="prev" href="{base}/digests/{html.escape(older)}.html">&larr; Previous issue ({html.escape(older)})</a>')
    parts.append(f'<a {link} href="{base}/digests/">All issues</a>')
    if newer:
        parts.append(f'<a {link} rel="next" href="{base}/digests/{html.escape(newer)}.html">Next issue ({html.escape(newer)}) &rarr;</a>')
    return (f'<nav aria-label="Digest archive" style="font:15px/1.6 Arial,Helvetica,sans-serif;text-align:center;padding:10px;'
            f'background:#ffffff;color:#1f2328">{" &middot; ".join(parts)}</nav>')




def site_root(cfg: Config) -> str:
    """The path of [site].base_url ("" or "/research"): the stylesheet and scripts are linked by path, so that the page
    loads them from wherever it was served (the policy allows only the page's own origin)."""
    return urlsplit(cfg.site.base_url).path.rstrip("/")


def css_address(cfg: Config) -> str:
    """The stylesheet's address, with a version from its bytes so that a changed theme reaches every reader at once."""
    return f"{site_root(cfg)}/assets/site.css?v={hashlib.sha256(stylesheet(cfg)).hexdigest()[:10]}"


__all__ = ["SiteReport", "build_site", "css_address", "digest_index", "featured_first", "own_page", "paginate", "search_engine", "stylesheet",
           "write_stylesheet"]
