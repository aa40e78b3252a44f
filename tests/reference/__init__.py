"""Copies of the official scoring code, used by the tests as independent references."""
