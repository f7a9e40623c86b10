"""Analyses over the IR that change nothing: the module tree and the summary table."""
