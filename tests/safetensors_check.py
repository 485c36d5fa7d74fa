#!/usr/bin/env python3
"""safetensors_check.py: interop check between elmo's safetensors code and the reference Python
package (used by tests/test_safetensors.c).

  safetensors_check.py read PATH NAME:DTYPE:SHAPE [...]
      Opens PATH with safetensors.safe_open (framework "pt" when torch is importable, else
      "numpy"), asserts each listed tensor has that dtype string and shape (SHAPE like 48x16,
      "0x16", or "-" for a scalar), checks every tensor's CRC32 against the metadata entry
      "checksum.<name>" written by elmo, and loads F32 tensors through numpy.
  safetensors_check.py write PATH
      Writes a file with safetensors.numpy.save_file for elmo to read (values documented below).

Exit status 0 on success, 1 with a message on stderr otherwise.
"""
import sys
import zlib


NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}


def fail(msg):
    print("safetensors_check: " + msg, file=sys.stderr)
    sys.exit(1)


def parse_shape(text):
    if text == "-":
        return []
    return [int(d) for d in text.split("x")]


def framework():
    try:
        import torch  # noqa: F401
        return "pt"
    except ImportError:
        return "numpy"


def check_expected(path, expects, fw):
    from safetensors import safe_open
    with safe_open(path, framework=fw) as f:
        keys = set(f.keys())
        for spec in expects:
            name, dtype, shape = spec.rsplit(":", 2)
            if name not in keys:
                fail(f"{path}: tensor '{name}' missing (have {sorted(keys)})")
            sl = f.get_slice(name)
            if sl.get_dtype() != dtype:
                fail(f"{path}: tensor '{name}' dtype {sl.get_dtype()} (expected {dtype})")
            if list(sl.get_shape()) != parse_shape(shape):
                fail(f"{path}: tensor '{name}' shape {sl.get_shape()} (expected {shape})")
        return f.metadata() or {}


def check_bytes(path, meta, fw):
    """Raw bytes via safetensors.deserialize, CRC32 against elmo's metadata, then get_tensor."""
    import numpy as np
    from safetensors import deserialize, safe_open
    with open(path, "rb") as fh:
        raw = {name: info for name, info in deserialize(fh.read())}
    for name, info in raw.items():
        want = meta.get("checksum." + name)
        if want is None:
            fail(f"{path}: no metadata checksum.{name}")
        got = "%08x" % (zlib.crc32(bytes(info["data"])) & 0xFFFFFFFF)
        if got != want:
            fail(f"{path}: tensor '{name}' crc32 {got} (metadata says {want})")
    with safe_open(path, framework=fw) as f:
        for name, info in raw.items():
            if fw == "pt":
                import torch
                b = f.get_tensor(name).reshape(-1).view(torch.uint8).numpy().tobytes()
            elif info["dtype"] in NUMPY_DTYPES:
                b = f.get_tensor(name).tobytes()
            else:
                continue  # BF16 / F8 have no numpy dtype: checked through the raw bytes above
            if b != bytes(info["data"]):
                fail(f"{path}: tensor '{name}' loaded through {fw} differs from the file bytes")
            if info["dtype"] == "F32" and not np.all(np.isfinite(np.frombuffer(b, np.float32))):
                fail(f"{path}: tensor '{name}' has non-finite values")
    return len(raw)


def cmd_read(path, expects):
    fw = framework()
    meta = check_expected(path, expects, fw)
    n = check_bytes(path, meta, fw)
    print(f"safetensors_check: {path}: {n} tensors ok (framework {fw})")


def cmd_write(path):
    """a [3, 4] F32 = arange(12) / 4; b [5] I64 = (i - 2) * 10^12; c [7] U8 = 250 + i (mod 256);
    d [2, 3] F16 = i - 2.5; e [0, 4] I32; metadata {"source": "python", "n": "5"}."""
    import numpy as np
    from safetensors.numpy import save_file
    tensors = {
        "a": (np.arange(12, dtype=np.float32) / 4).reshape(3, 4),
        "b": (np.arange(5, dtype=np.int64) - 2) * 10**12,
        "c": ((np.arange(7) + 250) % 256).astype(np.uint8),
        "d": (np.arange(6, dtype=np.float16) - 2.5).reshape(2, 3),
        "e": np.zeros((0, 4), dtype=np.int32),
    }
    save_file(tensors, path, metadata={"source": "python", "n": "5"})


def main(argv):
    if len(argv) >= 3 and argv[1] == "read":
        cmd_read(argv[2], argv[3:])
    elif len(argv) == 3 and argv[1] == "write":
        cmd_write(argv[2])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
