"""Shared core of the digits service: settings, errors, model, scan normalisation, results."""

__version__ = "0.1.0"
