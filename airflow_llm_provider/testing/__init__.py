"""Helpers for testing LLM workflows offline. Standard library only; nothing here is imported by
the provider at run time."""
