"""recsearch: find better DLRM recommendation models automatically and train them fast."""

__version__ = "0.1.0"
