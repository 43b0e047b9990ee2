"""The package version, in the one place every module (and setuptools) reads it from."""

__version__ = "0.2.0"
