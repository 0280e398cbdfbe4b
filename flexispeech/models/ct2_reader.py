"""Reader of CTranslate2 ``model.bin`` files (format versions 3 to 6).

CTranslate2 ships no reader of its own binary format (its Python package only writes it),
so this module parses it with numpy. Layout, all little-endian::

    u32 version, str spec_name, u32 revision, u32 n_vars,
    n_vars × (str name, u8 rank, rank × u32 dims, u8 dtype, u32 nbytes, nbytes raw),
    (version 3: u8 item width and u32 item count in place of dtype and nbytes)
    u32 n_aliases, n_aliases × (str alias, str target)

where ``str`` is ``u16 length`` (terminating NUL included), UTF-8 bytes, NUL. The reader
insists on consuming the file exactly: a truncated download, or a split file reassembled
in the wrong order, fails loudly instead of yielding garbage weights.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flexispeech.errors import FlexispeechError

SUPPORTED_VERSIONS = range(3, 7)

# dtype code -> numpy dtype; bfloat16 (5) is read as raw uint16 and widened below,
# because numpy has no bfloat16.
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
BFLOAT16 = 5
# Version 3 files name the dtype by its item width: 4 bytes f32, 2 bytes i16, 1 byte i8.
LEGACY_WIDTHS: dict[int, int] = {4: 0, 2: 2, 1: 1}
DTYPE_CODES: dict[str, int] = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


@dataclass
class Ct2Model:
    """The parsed content of a ``model.bin``.

    Attributes:
        version: binary format version.
        spec_name: model spec class name, e.g. ``"WhisperSpec"``.
        revision: spec revision.
        variables: name -> array as stored (f16 stays f16, int8 stays int8, bf16 -> f32).
        aliases: alias name -> target variable name.
    """

    version: int
    spec_name: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """The stored array of ``name`` (following an alias), unchanged."""
        return self.variables[self.aliases.get(name, name)]

    def has(self, name: str) -> bool:
        """Whether ``name`` is a variable or an alias."""
        return name in self.variables or name in self.aliases

    def weight(self, name: str) -> np.ndarray:
        """``name`` as float32, dequantized when the file carries ``<name>_scale``.

        CTranslate2 quantizes weight matrices per output row: ``q = round(w * scale)``
        with ``scale`` of shape ``[rows]`` (int8) or a scalar (int16), so
        ``w = q / scale``.
        """
        target = self.aliases.get(name, name)
        value = self.variables[target]
        scale_name = f"{target}_scale"
        if scale_name in self.variables:
            scale = self.variables[scale_name].astype(np.float32)
            shape = (-1,) + (1,) * (value.ndim - 1) if scale.ndim else ()
            return value.astype(np.float32) / scale.reshape(shape)
        if value.dtype.kind in "iu":
            raise FlexispeechError(f"{name}: integer weights without a {scale_name} variable")
        return value.astype(np.float32)


class _Cursor:
    """Sequential little-endian reads over a bytes buffer, with bounds checks."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise FlexispeechError(
                f"{self.path}: truncated CTranslate2 model.bin "
                f"(wanted {n} bytes at offset {self.pos}, file has {len(self.data)})"
            )
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.u16()))
        if not raw.endswith(b"\0"):
            raise FlexispeechError(f"{self.path}: malformed string at offset {self.pos}")
        return raw[:-1].decode("utf-8")


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (a file, or a directory holding one).

    Raises:
        FlexispeechError: the file is missing, of an unsupported version, truncated,
            or has bytes left over after the alias table.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FlexispeechError(f"{path}: no CTranslate2 model.bin here")
    cur = _Cursor(path.read_bytes(), path)
    version = cur.u32()
    if version not in SUPPORTED_VERSIONS:
        raise FlexispeechError(
            f"{path}: unsupported CTranslate2 binary version {version} "
            f"(supported: {SUPPORTED_VERSIONS.start}..{SUPPORTED_VERSIONS.stop - 1})"
        )
    model = Ct2Model(version=version, spec_name=cur.string(), revision=cur.u32())
    for _ in range(cur.u32()):
        name = cur.string()
        dims = tuple(cur.u32() for _ in range(cur.u8()))
        if version >= 4:
            code = cur.u8()
            nbytes = cur.u32()
        else:  # version 3 stores the item width and the item count instead
            code = LEGACY_WIDTHS.get(cur.u8(), -1)
            nbytes = cur.u32() * (DTYPES[code].itemsize if code in DTYPES else 0)
        if code not in DTYPES:
            raise FlexispeechError(f"{path}: variable {name} has an unknown dtype")
        dtype = DTYPES[code]
        if nbytes != dtype.itemsize * int(np.prod(dims, dtype=np.int64)):
            raise FlexispeechError(f"{path}: variable {name} of shape {dims} has {nbytes} bytes")
        array = np.frombuffer(cur.take(nbytes), dtype=dtype).reshape(dims)
        if code == BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        model.variables[name] = array
    for _ in range(cur.u32()):  # aliases (present since version 3)
        alias = cur.string()
        model.aliases[alias] = cur.string()
    if cur.pos != len(cur.data):
        raise FlexispeechError(
            f"{path}: {len(cur.data) - cur.pos} bytes left after the last CTranslate2 record "
            "(a corrupt file, or split parts joined in the wrong order?)"
        )
    return model
