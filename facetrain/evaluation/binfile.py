"""insightface verification ``.bin`` files: a pickled ``(images, is_same)`` pair, read without running code.

The published files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...) hold a list of encoded JPEGs as byte
strings (Python 2 ``str``, Python 3 ``bytes``) and a list of bools; pair i is images 2i and 2i+1.
Some copies were re-saved through numpy: each image a 1-D uint8 array of the encoded bytes, the
answers a bool array or numpy bools. A pickle can name any importable callable, so the unpickler
here builds plain data only: lists, tuples, bytes, numbers, and numpy arrays rebuilt by our own
stand-ins for the few numpy globals such a file names. Every other global is refused.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from facetrain.errors import DataError

_SHAPE = "expected a pickled (images, is_same) pair: a list of encoded images and a list of bools"
_IMAGE_FORMS = "a .bin image must be encoded bytes, a 1-D uint8 array of them, or HxWx3 uint8 pixels"


def read_bin(path: Path) -> tuple[list[bytes], list[bool]]:
    """The encoded images and the answers of an insightface ``.bin``, checked record by record.

    Raises:
        DataError: the file is not such a pickle, asks for anything but plain data, or holds a record
            that is not an image (the message names the file and the record).
    """
    where = str(path)
    try:
        with path.open("rb") as file:
            data = _PlainDataUnpickler(file, where).load()
    except DataError:
        raise
    except Exception as exc:  # any failure on untrusted bytes is the file's fault, never a bug here
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise DataError(f"{where}: not a readable pairs .bin ({reason}): re-create it") from None
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataError(f"{where}: {_SHAPE}, got {type(data).__name__}: this is not a pairs .bin")
    images, is_same = data
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        images = list(images)  # (N, H, W, 3) pixels saved as one array
    if not isinstance(images, (list, tuple)):
        raise DataError(f"{where}: {_SHAPE}, but the images are a {type(images).__name__}: this is not a pairs .bin")
    encoded = [_encoded_image(where, index, item) for index, item in enumerate(images)]
    answers = _answers(where, is_same)
    if not answers or len(encoded) != 2 * len(answers):
        raise DataError(f"{where}: {len(encoded)} images for {len(answers)} pairs: a pairs .bin has 2 images per pair")
    return encoded, answers


def _encoded_image(where: str, index: int, item: object) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if not isinstance(item, np.ndarray):
        raise DataError(
            f"{where}: {_SHAPE}, but the images are not all bytes (image {index} is a {type(item).__name__}): "
            "this is not a pairs .bin"
        )
    if item.dtype.hasobject:
        raise DataError(f"{where}: image {index} is a numpy object array, not encoded image bytes: {_IMAGE_FORMS}")
    if item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    if item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3 and min(item.shape) > 0:
        return _png(item)
    shape = "x".join(map(str, item.shape)) or "0-D"
    raise DataError(f"{where}: image {index} is a {shape} {item.dtype} array, not encoded image bytes: {_IMAGE_FORMS}")


def _png(pixels: np.ndarray) -> bytes:
    """Decoded (H, W, 3) uint8 RGB pixels as PNG bytes: lossless, so the model sees exactly these pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _answers(where: str, is_same: object) -> list[bool]:
    """A list or tuple of bools (Python's or numpy's, or 0/1), or a 1-D bool or integer array."""
    if isinstance(is_same, np.ndarray) and is_same.ndim == 1 and is_same.dtype.kind in "biu":
        is_same = is_same.tolist()
    if isinstance(is_same, (list, tuple)):
        values = [
            item.item() if isinstance(item, np.generic) and item.dtype.kind in "biu" else item for item in is_same
        ]
        if all(isinstance(value, int) and value in (0, 1) for value in values):
            return [bool(value) for value in values]
    raise DataError(f"{where}: {_SHAPE}, but is_same is not all bools: this is not a pairs .bin")


def _plain(item: object) -> object:
    """A numpy bool or integer scalar as Python's; anything else unchanged."""
    return item.item() if isinstance(item, np.generic) and item.dtype.kind in "biu" else item


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only plain data: every class or function reference but our numpy stand-ins is refused."""

    def __init__(self, file: BinaryIO, where: str) -> None:
        super().__init__(file, encoding="bytes")  # the published files come from Python 2, whose str is bytes
        self.where = where

    def find_class(self, module: str, name: str) -> object:
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        raise DataError(
            f"{self.where}: refused to load: the pickle asks for {module}.{name}, and a pairs .bin may hold "
            "only bytes, lists, tuples, bools and plain numpy arrays"
        )


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """Python 3 writes bytes at protocol 2 as ``_codecs.encode(text, "latin1")``; rebuild them ourselves."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode("latin-1")


class _Rebuilder:
    """A callable the pickle may name. It takes no state and no attributes, so a file cannot alter it
    (pickle's BUILD would set attributes on a plain function)."""

    __slots__ = ("_function",)

    def __init__(self, function: Any) -> None:
        object.__setattr__(self, "_function", function)

    def __call__(self, *args: object) -> Any:
        return self._function(*args)

    def __setattr__(self, name: str, value: object) -> None:
        raise ValueError("a pairs .bin cannot set attributes")

    def __setstate__(self, state: object) -> None:
        raise ValueError("a pairs .bin cannot set state on a rebuilder")


def _not_callable(*args: object) -> None:
    raise ValueError("numpy.ndarray may only be named as the type _reconstruct rebuilds")


_NDARRAY = _Rebuilder(_not_callable)  # what the pickle gets for numpy.ndarray: a token, never the class


def _empty_array(subtype: object, shape: object = None, dtype: object = None) -> np.ndarray:
    """Stands in for numpy's ``_reconstruct(ndarray, (0,), b"b")``: an empty plain array that the pickle's
    ``__setstate__`` then fills. The file's shape is ignored, so it cannot make us allocate anything."""
    if subtype is not _NDARRAY:
        raise ValueError("only plain numpy arrays can be rebuilt")
    return np.ndarray((0,), dtype=np.uint8)


def _array_from_buffer(buffer: object, dtype: object, shape: object, order: object = "C") -> np.ndarray:
    """Stands in for numpy's ``_frombuffer(raw, dtype, shape, order)``, which protocol 5 pickles name: a view
    of bytes the file holds, so its size is bounded by the file's."""
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ValueError("only arrays of plain values held in the file can be rebuilt")
    if not isinstance(shape, tuple) or not all(isinstance(size, int) for size in shape) or order not in ("C", "F"):
        raise ValueError("an array's shape must be whole numbers and its order C or F")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)  # a size mismatch raises ValueError


def _numpy_scalar(dtype: object, data: object = None) -> Any:
    """Stands in for numpy's ``multiarray.scalar(dtype, raw_bytes)``, for bool and integer scalars only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biu" or not isinstance(data, bytes):
        raise ValueError("only numpy bool and integer scalars can be rebuilt")
    if len(data) != dtype.itemsize:
        raise ValueError(f"a {dtype} scalar needs {dtype.itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype)[0]


_ALLOWED: dict[tuple[str, str], object] = {
    ("_codecs", "encode"): _Rebuilder(_latin1_bytes),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Rebuilder(np.dtype),  # parses a type string; object arrays are refused per record later
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _Rebuilder(_empty_array) for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _Rebuilder(_numpy_scalar) for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _Rebuilder(_array_from_buffer) for core in ("core", "_core")},
}
