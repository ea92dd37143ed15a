"""The weekly digest: plan the issue, select its publications, render its variants, archive it."""

from .issue import PlannedIssue, plan_issue, render_variants
from .render import RenderedIssue, Renderer
from .select import issue_id_for, select_issue

__all__ = ["PlannedIssue", "RenderedIssue", "Renderer", "issue_id_for", "plan_issue", "render_variants", "select_issue"]
