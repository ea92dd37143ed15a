"""Text and HTML as feeds need them: sanitised (nh3), absolute, and free of characters XML forbids."""

from __future__ import annotations

import html
import re
from functools import lru_cache

import lxml.html
import nh3

from ..models import Publication

# C0 controls but tab/LF/CR, DEL and C1 controls, lone surrogates, non-characters: XML 1.0 forbids or discourages them.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
_SPACES = re.compile(r"\s+")
URL_SCHEMES = {"http", "https", "mailto"}
SUMMARY_TAGS = {"a", "abbr", "b", "br", "cite", "code", "em", "i", "li", "ol", "p", "q", "strong", "sub", "sup", "ul"}
CONTENT_TAGS = (nh3.ALLOWED_TAGS | {"figure", "figcaption", "img", "small"}) - {"map", "area"}
CONTENT_ATTRS = {**nh3.ALLOWED_ATTRIBUTES, "img": {"src", "alt", "width", "height"}, "a": {"href", "title", "hreflang"}}


# Built once: nh3.clean() with custom sets converts them on every call (about 15x slower).
_SUMMARY_CLEANER = nh3.Cleaner(tags=SUMMARY_TAGS, attributes={"a": {"href", "title"}}, url_schemes=URL_SCHEMES)
_CONTENT_CLEANER = nh3.Cleaner(tags=CONTENT_TAGS, attributes=CONTENT_ATTRS, url_schemes=URL_SCHEMES)
_TEXT_CLEANER = nh3.Cleaner(tags=set())


def clean_text(text: str) -> str:
    """Drop the characters XML cannot carry (U+000B, NUL, lone surrogates...)."""
    return _FORBIDDEN.sub("", text)


@lru_cache(maxsize=4096)  # names, types and topic labels repeat across thousands of entries
def plain_text(text: str) -> str:
    """Tags (and script/style contents) removed, entities decoded, whitespace collapsed: for titles and names."""
    text = clean_text(text)
    if "<" in text or "&" in text:
        text = clean_text(html.unescape(_TEXT_CLEANER.clean(text)))  # again: &#1; decodes to a forbidden character
    return _SPACES.sub(" ", text).strip()


_URL_ATTR = re.compile(r"""\b(?:href|src)=["']?(?!https?://|mailto:)""", re.I)


def _absolute(fragment: str, base: str) -> str:
    """Relative href/src made absolute against ``base`` (parsing only when there is one)."""
    if not _URL_ATTR.search(fragment):
        return fragment
    root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    root.make_links_absolute(base, resolve_base_href=False, handle_failures="discard")
    # Serialise the wrapper, text and tail included (escaped as they came), and drop its own tags.
    return lxml.html.tostring(root, encoding="unicode")[len("<div>"):-len("</div>")]


def summary_html(pub: Publication) -> str:
    """The summary as safe inline HTML (a plain-text summary comes out escaped, which is the same thing)."""
    text = clean_text(pub.summary)
    if "<" not in text and "&" not in text:
        return text.replace(">", "&gt;")  # plain text: nothing to sanitise
    cleaned = _SUMMARY_CLEANER.clean(text)
    return _absolute(cleaned, pub.url)


def content_html(pub: Publication) -> str:
    """The entry's content: the image as a <figure> with caption and credit, then the body (or the summary)."""
    parts = []
    if pub.image:
        img = pub.image
        alt = html.escape(plain_text(img.alt or img.caption or pub.title), quote=True)
        caption = html.escape(plain_text(img.caption), quote=False)
        credit = f" <small>Photo: {html.escape(plain_text(img.credit), quote=False)}</small>" if img.credit else ""
        figcaption = f"<figcaption>{caption}{credit}</figcaption>" if caption or credit else ""
        parts.append(f'<figure><img src="{html.escape(img.url, quote=True)}" alt="{alt}">{figcaption}</figure>')
    body = pub.body_html or (f"<p>{summary_html(pub)}</p>" if pub.summary else "")
    if body:
        cleaned = _CONTENT_CLEANER.clean(clean_text(body))
        parts.append(_absolute(cleaned, pub.url))
    return "\n".join(parts)


def body_html(pub: Publication) -> str:
    """The body alone, sanitised and with absolute links: for the publication's own page (its image is shown apart)."""
    return _absolute(_CONTENT_CLEANER.clean(clean_text(pub.body_html)), pub.url) if pub.body_html else ""
