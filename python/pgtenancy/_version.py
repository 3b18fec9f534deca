"""The one version source of pgtenancy: the package, the SQL and the extension."""

__version__ = "0.3.0"
