"""The op registry (registry.py) and the op definitions, one family per file."""
