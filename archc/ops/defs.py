"""Import every op family so each registers itself."""

from archc.ops import elementwise, nn, pool, shape  # noqa: F401
