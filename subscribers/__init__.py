"""The audience: who gets the digest, with what consent, and who must never be mailed again.

The pipeline and the web app call these functions; none of them sends mail itself.
"""

from .service import (
    Erasure,
    ImportReport,
    InvalidAddress,
    SubscribeResult,
    add_subscriber,
    confirm,
    confirmation_holds,
    email_hash,
    export_csv,
    forget,
    import_csv,
    import_csv_bytes,
    mailbox_of,
    normalise_email,
    record_delivery_event,
    seed_samples,
    set_preferences,
    show,
    subscribe,
    unsubscribe,
)
from .tokens import ConfirmClaim, make_confirm_token, make_token, new_nonce, read_confirm_token, read_token

__all__ = [
    "ConfirmClaim",
    "Erasure",
    "ImportReport",
    "InvalidAddress",
    "SubscribeResult",
    "add_subscriber",
    "confirm",
    "confirmation_holds",
    "email_hash",
    "export_csv",
    "forget",
    "import_csv",
    "import_csv_bytes",
    "make_confirm_token",
    "mailbox_of",
    "make_token",
    "new_nonce",
    "normalise_email",
    "read_confirm_token",
    "read_token",
    "record_delivery_event",
    "seed_samples",
    "set_preferences",
    "show",
    "subscribe",
    "unsubscribe",
]
