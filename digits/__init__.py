"""The `digits` command line: the one composition root (nothing imports it); `digits/local/` runs it all on one machine."""

__version__ = "0.1.0"
