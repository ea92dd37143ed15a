"""Delivery: build the message once per issue variant, personalise per recipient, send, record."""

from .backends import OutboxTransport, SmtpTransport, Transport, Variant, transport_factory
from .send import SendOutcome, send_issue, send_test

__all__ = ["OutboxTransport", "SendOutcome", "SmtpTransport", "Transport", "Variant", "send_issue", "send_test", "transport_factory"]
