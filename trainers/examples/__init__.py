"""Runnable examples of carls used as a library and as jobs (see the README)."""
