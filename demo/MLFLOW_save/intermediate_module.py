"""Opens an image or text source, be it a URL or a local file."""

import urllib.request

import get_print
from sub_folder.sub_sub_folder import is_sub


def read_bytes(source, timeout=30):
    """Return the bytes behind ``source``: a URL (http, https, file) or a local file path."""
    if is_sub.is_url(source):
        get_print.get_print(f"Downloading {source}")
        request = urllib.request.Request(source, headers={"User-Agent": "cloudflow-demo"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    with open(source, "rb") as file:
        return file.read()
