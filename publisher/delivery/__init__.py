"""Delivery: build the message once per issue variant, personalise per recipient, send, record."""

from .backends import Backend, OutboxBackend, SmtpBackend, make_backend
from .send import send_issue

__all__ = ["Backend", "OutboxBackend", "SmtpBackend", "make_backend", "send_issue"]
