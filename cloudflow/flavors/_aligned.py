"""Safetensors files whose tensors start on 64-byte boundaries, for any array library.

Why: ``safetensors``' own writers align data to 8 bytes only, and a memory-mapped weight at such
an address sends the CPU matrix kernels down another code path than the 64-byte aligned memory
the model had when saved; the outputs then differ in their last bits (seen here on a BERT
pipeline: scores off by 1e-7). Aligned files load memory-mapped *and* give bit-identical outputs.

The file is standard safetensors, readable by any safetensors loader. The format has no gaps
between tensors, so alignment comes from the order (sizes that are multiples of the alignment
first) and, with ``pad``, from small ``uint8`` tensors named ``__cloudflow_padding__.N`` where a
tensor would start off the boundary. Without ``pad`` (a file another library reads, which would
warn about unknown names) only the odd-sized tensors at the end, typically biases, may be
unaligned.

In a save, the file's digest comes from the arrays in memory, before anything is written: a
store that already holds this very file links it instead (the save context's ``shared_files``:
see :class:`~cloudflow.flavors._base.SharedFiles`), and the manifest needs no second pass over
the written file.

The torch flavor hands torch tensors over; the JAX flavors hand numpy views of their arrays.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.integrity import digests as _digests

if TYPE_CHECKING:
    from cloudflow.flavors._base import SharedFiles

#: Every tensor's data starts on a multiple of this many bytes in the file, hence in memory once
#: the file is memory-mapped (mappings start on a page).
ALIGNMENT = 64
PAD_PREFIX = "__cloudflow_padding__."

#: safetensors' dtype codes by dtype name (torch's and numpy's names agree, ``bfloat16`` being
#: ml_dtypes' for numpy); an array of another dtype cannot be stored.
DTYPE_CODES = {
    **{"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"},
    **{"int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8"},
    **{"uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL", "complex64": "C64"},
    **{"float8_e4m3fn": "F8_E4M3", "float8_e4m3fnuz": "F8_E4M3FNUZ"},
    **{"float8_e5m2": "F8_E5M2", "float8_e5m2fnuz": "F8_E5M2FNUZ"},
}


@dataclass(frozen=True)
class Entry:
    """One tensor to write: its dtype code, shape, size, and how to get its bytes."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    #: The tensor's bytes, C-contiguous and little-endian; called once per pass over the file
    #: (the digest, then the write).
    data: Callable[[], bytes | memoryview]


def write(
    entries: Mapping[str, Entry],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    *,
    pad: bool = True,
    shared: SharedFiles | None = None,
) -> None:
    """Write ``entries`` as one aligned safetensors file (see the module docstring).

    ``shared`` is the save's store of shared files (``SaveContext.shared_files``): a file it
    holds already is linked, not written.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    layout: list[Entry | int] = []  # tensors and padding byte counts, in file order
    offset = 0
    for name in sorted(entries, key=lambda n: (entries[n].nbytes % ALIGNMENT != 0, n)):
        entry = entries[name]
        if pad and entry.nbytes and offset % ALIGNMENT:
            gap = ALIGNMENT - offset % ALIGNMENT
            header[f"{PAD_PREFIX}{offset}"] = {
                "dtype": "U8",
                "shape": [gap],
                "data_offsets": [offset, offset + gap],
            }
            layout.append(gap)
            offset += gap
        header[name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        layout.append(entry)
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGNMENT)  # spaces are JSON whitespace; data starts aligned
    head = struct.pack("<Q", len(raw)) + raw

    def pieces() -> Iterator[bytes | memoryview]:
        yield head
        for item in layout:
            if isinstance(item, int):
                yield bytes(item)
            elif item.nbytes:
                yield item.data()

    files = shared
    size = len(head) + offset
    if files is not None:
        hasher = _digests.new_hasher()
        for piece in pieces():
            hasher.update(piece)
        digest = str(hasher.hexdigest())
        if files.link_existing(digest, size, Path(filename)):
            return
        with contextlib.suppress(FileNotFoundError):  # never write through a shared link
            os.unlink(filename)
    with open(filename, "wb") as f:
        for piece in pieces():
            f.write(piece)
    if files is not None:
        files.adopt(Path(filename), digest, size)
