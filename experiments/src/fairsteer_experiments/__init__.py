"""Experiments: thin scripts over the library (demo, tabular, representations)."""
