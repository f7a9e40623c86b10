"""Package discovery only; all metadata lives in pyproject.toml.

The repository keeps ``backends/``, ``grammar/`` and ``specs/`` at the top level; they are
installed *inside* ``archc`` as ``archc.backends``, ``archc._grammar`` and ``archc._specs``
(see archc/resources.py). pyproject.toml alone cannot discover subpackages under a
renamed prefix, hence this file. Every folder (with or without ``__init__.py``) becomes a
package, so no module or data file is silently left out of the wheel.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = {
    "archc": "archc",
    "archc.backends": "backends",
    "archc._grammar": "grammar",
    "archc._specs": "specs",
}


def packages_under(prefix: str, where: str) -> list[str]:
    """``prefix`` plus one dotted name per sub-folder of ``where`` (caches and hidden skipped)."""
    root = HERE / where
    found = [prefix]
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if path.is_dir() and all(p.isidentifier() and not p.startswith((".", "__")) for p in parts):
            found.append(".".join((prefix, *parts)))
    return found


setup(
    package_dir=PACKAGE_DIR,
    packages=[name for prefix, where in PACKAGE_DIR.items() for name in packages_under(prefix, where)],
)
