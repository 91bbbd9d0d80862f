"""A store's zarr arrays and their chunks: created or opened against the spec, each chunk
verified (crc32c in every chunk file, a sha256 completion record per chunk) when read."""

from __future__ import annotations

import hashlib
import math
import pathlib
from typing import Any

import numpy as np

from stabkit.sweeps.dataset import _grid, _var_dtype, _var_shape
from stabkit.sweeps.files import _read_json
from stabkit.sweeps.spec import _AXES, LAYER_VARS

_RECORDS = "stabkit-chunks"  # the completion records' directory in a store


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.astype(a.dtype.newbyteorder("<"), copy=False).data).hexdigest()


def _configs(spec: dict[str, Any], start: int, stop: int) -> str:
    """Which configs flat rows ``start:stop`` hold, for an error message."""
    shape, _ = _grid(spec)
    n = math.prod(shape)

    def at(i):
        idx = np.unravel_index(i, shape)
        return " ".join(f"{a}={spec[a][int(j)]}" for a, j in zip(_AXES, idx, strict=True))

    return f"configs {start}..{stop - 1} of {n}: from {at(start)} to {at(stop - 1)}"


class _Arrays:
    """The zarr group of a store: its arrays, checked against the spec, and chunk verification."""

    def __init__(self, path: pathlib.Path, spec: dict[str, Any], mode: str):
        import zarr

        self.path, self.spec = path, spec
        shape, self.n_layers = _grid(spec)
        self.n = math.prod(shape)
        try:
            self.group = zarr.open_group(str(path), mode=mode)
        except Exception as e:  # a missing or damaged zarr.json: JSON, KeyError, zarr's own
            raise ValueError(
                f"{path / 'zarr.json'} (the store's zarr group) is missing or damaged: "
                f"{type(e).__name__}: {e}"
            ) from None
        self.arrays: dict[str, Any] = {}
        self.rows = 0

    def meta(self) -> dict[str, Any]:
        try:
            meta = self.group.attrs["stabkit"]
        except KeyError:
            raise ValueError(
                f"{self.path / 'zarr.json'} is a zarr group without stabkit's attributes: not a "
                "stabkit sweep"
            ) from None
        if not isinstance(meta, dict) or not all(
            k in meta for k in ("format", "spec", "versions", "probe", "devices")
        ):
            raise ValueError(f"{self.path / 'zarr.json'}: the 'stabkit' attribute is damaged")
        return dict(meta)

    def open(self, name: str):
        """The array of variable ``name``, checked; ValueError naming it if missing or wrong."""
        file = self.path / name / "zarr.json"
        try:
            arr = self.group[name]
        except KeyError:
            raise ValueError(
                f"{self.path} is missing variable {name!r} ({file} not found)"
            ) from None
        except Exception as e:
            raise ValueError(
                f"{file} (variable {name!r}) is damaged: {type(e).__name__}: {e}"
            ) from None
        shape = _var_shape(name, self.n, self.n_layers)
        dtype = _var_dtype(name, self.spec["dtype"])
        chunks = getattr(arr, "chunks", None)
        if (
            not hasattr(arr, "shape")
            or arr.shape != shape
            or arr.dtype != dtype
            or chunks is None
            or tuple(chunks[1:]) != shape[1:]
            or (self.rows and chunks[0] != self.rows)
        ):
            raise ValueError(
                f"{file}: variable {name!r} is not what this sweep writes (shape "
                f"{getattr(arr, 'shape', None)}, dtype {getattr(arr, 'dtype', None)}, chunks "
                f"{chunks}; expected shape {shape}, dtype {dtype}"
                + (f", chunks of {self.rows} configs)" if self.rows else ")")
            )
        self.rows = chunks[0]
        self.arrays[name] = arr
        return arr

    def create(self, name: str, rows: int):
        """Create variable ``name`` (after the marker: this directory is stabkit's)."""
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

        shape = _var_shape(name, self.n, self.n_layers)
        dt = _var_dtype(name, self.spec["dtype"])
        self.group.create_array(
            name,
            shape=shape,
            chunks=(min(rows, self.n), *shape[1:]),
            dtype=dt,
            fill_value=-1 if dt.kind == "i" else np.nan,
            serializer=BytesCodec(),
            compressors=[ZstdCodec(), Crc32cCodec()],  # the checksum of the compressed bytes
        )
        return self.open(name)

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.rows)

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.rows, min((c + 1) * self.rows, self.n)

    def where(self, name: str, c: int) -> str:
        a, b = self.bounds(c)
        return (
            f"{self.path}: variable {name!r}, chunk {c} of {self.n_chunks} "
            f"({_configs(self.spec, a, b)})"
        )

    def record_file(self, c: int) -> pathlib.Path:
        return self.path / _RECORDS / f"{c}.json"

    def read_chunk(self, c: int, out: dict[str, np.ndarray] | None = None) -> str | None:
        """Verify chunk ``c`` of every variable (into ``out``, if given): None if complete, else
        what is wrong, naming the store, the variable, the chunk and its configs."""
        a, b = self.bounds(c)
        record_file = self.record_file(c)
        if not record_file.exists():
            return (
                f"{self.path}: chunk {c} of {self.n_chunks} ({_configs(self.spec, a, b)}) was "
                f"never completed (no {record_file})"
            )
        try:
            record = _read_json(record_file, f"the completion record of chunk {c}")
            digests = record["sha256"]
            if record.get("configs") != [a, b] or not isinstance(digests, dict):
                raise ValueError(f"{record_file} does not describe configs {a}..{b - 1}")
        except (ValueError, KeyError, TypeError) as e:
            return f"{self.path}: chunk {c} of {self.n_chunks}: damaged completion record: {e}"
        for name, arr in self.arrays.items():
            coords = (c, 0) if name in LAYER_VARS else (c,)
            file = self.path / name / arr.metadata.encode_chunk_key(coords)
            if not file.is_file():
                return f"{self.where(name, c)}: the chunk file {file} is missing"
            try:
                data = np.asarray(arr[a:b])
            except Exception as e:  # crc32c mismatch (truncated, flipped), undecodable
                return f"{self.where(name, c)}: the chunk file {file} is corrupt ({e})"
            if digests.get(name) != _digest(data):
                return (
                    f"{self.where(name, c)}: the chunk file {file} does not hold the data "
                    "recorded for it (sha256 mismatch)"
                )
            if out is not None:
                out[name][a:b] = data
        return None
