"""publisher: newsletters and feeds for teams that publish research and commentary."""

__version__ = "0.1.0"
