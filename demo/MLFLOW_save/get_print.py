"""Timestamped progress lines, so a long save or load shows what it is doing."""

import time
from contextlib import contextmanager


def get_print(message):
    """Print ``message`` after the current time, e.g. ``[14:02:31] Training the digits net``."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def timed(message):
    """Print ``message``, run the block, then print how long it took."""
    get_print(f"{message} ...")
    start = time.perf_counter()
    yield
    get_print(f"{message}: done in {time.perf_counter() - start:.1f} s")
