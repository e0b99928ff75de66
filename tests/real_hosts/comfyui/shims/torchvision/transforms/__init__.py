"""``torchvision.transforms`` of the import-only stand-in (why: see ``torchvision/__init__.py`` one folder up)."""

from .. import __getattr__ as _refuse


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _refuse(f"transforms.{name}")
