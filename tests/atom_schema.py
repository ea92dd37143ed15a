"""Validate Atom 1.0 documents against the RELAX NG schema of RFC 4287, Appendix B.

The schema is kept in compact syntax (tests/data/atom.rnc), converted to the XML
syntax with rnc2rng and compiled with lxml.etree.RelaxNG (libxml2). RELAX NG only
checks structure: the Schematron rules of the RFC (an entry needs an author, a
link or a content) are annotations here and are not enforced.
"""

from __future__ import annotations

import re
import warnings
from functools import cache
from pathlib import Path

from lxml import etree

__all__ = ["validate_atom"]

_RNC = Path(__file__).resolve().parent / "data" / "atom.rnc"

# rnc2rng writes every `namespace p = "..."` declaration of the compact schema as
# an xmlns:p attribute on <grammar>, including the RFC's `namespace local = ""`.
# `xmlns:local=""` is not well-formed XML (Namespaces in XML 1.0 forbids binding a
# prefix to the empty name; libxml2: "xmlns:local: Empty XML namespace is not
# allowed"). The prefix is never used in the output (rnc2rng spells `local:*` as
# <nsName ns=""/>), so the declaration is dropped from the <grammar> start tag.
# Nothing else needs a workaround: rnc2rng maps the xsd: datatypes to the
# XML Schema datatype library itself (datatypeLibrary on <grammar>), declares the
# xml: prefix correctly, and libxml2 ignores the foreign s:rule annotations.
_EMPTY_PREFIX_DECL = re.compile(r'\s+xmlns:[A-Za-z_][\w.-]*=""')


def _rnc_to_rng(rnc: str) -> bytes:
    import rnc2rng  # test-only dependency, imported when a test first needs it

    # Any DeprecationWarning from rnc2rng or its parser generator (rply) would be
    # an error under this project's pytest config; keep it out of the tests, here only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(rnc2rng|rply)(\.|$)")
        rng = rnc2rng.dumps(rnc2rng.loads(rnc))
    end = rng.index(">", rng.index("<grammar"))  # end of the <grammar ...> start tag
    return (_EMPTY_PREFIX_DECL.sub("", rng[:end]) + rng[end:]).encode("utf-8")


@cache
def _schema() -> etree.RelaxNG:
    rng = _rnc_to_rng(_RNC.read_text(encoding="utf-8"))
    return etree.RelaxNG(etree.fromstring(rng))


def validate_atom(xml: bytes) -> list[str]:
    """Return the RELAX NG errors of an Atom feed or entry document; [] when it is valid."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        doc = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    schema = _schema()
    if schema.validate(doc):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log] or ["invalid (no detail from libxml2)"]
