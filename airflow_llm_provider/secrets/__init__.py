"""Secrets backends shipped with the provider (``[secrets] backend = ...``)."""
