"""The deepest module of the demo: saved with the model although nothing imports it by path."""

from urllib.parse import urlparse

URL_SCHEMES = ("http", "https", "file")


def is_url(source):
    """True when ``source`` is a URL (http, https or file) rather than a local path."""
    return urlparse(str(source)).scheme in URL_SCHEMES
