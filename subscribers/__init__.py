"""The audience: who gets the digest, with what consent, and who must never be mailed again.

The pipeline and the web app call these functions; none of them sends mail itself.
"""

from .service import (
    ImportReport,
    InvalidAddress,
    add_subscriber,
    export_csv,
    import_csv,
    normalise_email,
    seed_samples,
)
from .tokens import make_token, read_token

__all__ = [
    "ImportReport",
    "InvalidAddress",
    "add_subscriber",
    "export_csv",
    "import_csv",
    "make_token",
    "normalise_email",
    "read_token",
    "seed_samples",
]
