"""The weekly digest: select the issue's publications, render them to HTML and text."""

from .render import RenderedIssue, Renderer
from .select import issue_id_for, select_issue

__all__ = ["RenderedIssue", "Renderer", "issue_id_for", "select_issue"]
