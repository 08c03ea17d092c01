"""Digests, the manifest, signatures, private staging and sealed folders: the trust boundary."""
