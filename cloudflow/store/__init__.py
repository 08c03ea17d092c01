"""Tracking stores, shared weights, the download cache, remote areas and listing."""
