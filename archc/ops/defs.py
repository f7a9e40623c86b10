"""Import every op family so each registers itself."""

from archc.ops import conditional, create, elementwise, fused, nn, pool, resize, shape  # noqa: F401
