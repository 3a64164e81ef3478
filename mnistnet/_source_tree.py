"""What `import mnistnet` says when the package folder it found has no compiled extensions."""

from __future__ import annotations

import os

PACKAGE_INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__init__.py")


def missing_extensions() -> ImportError:
    """What to say when this folder has no compiled extensions: most often it is the source
    tree, found first on sys.path (Python run from the repository's root), shadowing an
    installed mnistnet."""
    import importlib.machinery
    import sys

    here = os.path.dirname(os.path.abspath(PACKAGE_INIT))
    parent = os.path.dirname(here)
    others = [p for p in sys.path if os.path.abspath(p or ".") != parent]
    installed = importlib.machinery.PathFinder.find_spec("mnistnet", others)
    if installed is not None and installed.origin:
        return ImportError(
            f"the folder {here} (mnistnet's source, which has no compiled extensions) "
            f"shadows the installed mnistnet in {os.path.dirname(installed.origin)}: run "
            "Python from another folder (e.g. cd ..), or install in place with pip install -e .")
    return ImportError(
        f"mnistnet's compiled extensions are missing next to {PACKAGE_INIT}: install the package "
        "(pip install .) and run from another folder, or build in place (pip install -e .)")
