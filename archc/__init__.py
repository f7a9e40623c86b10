"""archc: a declarative neural-network architecture compiler."""

__version__ = "0.1.0"
