"""Delivery: build the message once per issue variant, personalise per recipient, send, record.

The digest's stages (compose, deliver, archive, retry) are here; ``publisher.pipeline.send_digest`` runs them in order.
"""

from .backends import OutboxTransport, SmtpTransport, Transport, Variant, transport_factory
from .send import SendOutcome, send_test

__all__ = ["OutboxTransport", "SendOutcome", "SmtpTransport", "Transport", "Variant", "send_test", "transport_factory"]
