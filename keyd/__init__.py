"""keyd: keeps ZITADEL service-user keys alive."""

__version__ = "0.1.0"
