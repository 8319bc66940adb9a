"""medgen.io.savez_compressed writes the same bytes for the same arrays, whatever the time or the Python patch
release (DVC hashes and Optuna study names are taken from these files)."""

from __future__ import annotations

import struct
import zipfile

import numpy as np

from medgen.io import savez_compressed


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), "labels": np.arange(20) % 2}


def test_no_zip64_headers_below_the_limit_and_the_arrays_read_back(tmp_path):
    path = tmp_path / "a.npz"
    savez_compressed(path, **arrays())
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    assert [info.date_time for info in infos] == [(1980, 1, 1, 0, 0, 0)] * 2
    for info in infos:
        # each entry's local header: no extra field and "version needed" 2.0. A zip64 extra (which Python
        # 3.11.4 started to mark with version 4.5) made the same arrays different bytes per patch release.
        signature, version = struct.unpack_from("<IH", raw, info.header_offset)
        (extra,) = struct.unpack_from("<H", raw, info.header_offset + 28)
        assert (signature, version, extra) == (0x04034B50, 20, 0)
    loaded = np.load(path)
    assert all(np.array_equal(loaded[k], v) for k, v in arrays().items())
