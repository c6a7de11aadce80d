"""The version of Scriptgate, one place: the package, settings and health read it."""

__version__ = "0.1.0"
