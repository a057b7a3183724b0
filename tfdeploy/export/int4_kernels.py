"""Which kernels run a TFLite file's int4 FULLY_CONNECTED weights (``export.int4_kernels``).

XNNPACK runs a dynamic int4 FULLY_CONNECTED with its int8 x int4 kernels. On this x86 CPU
those ran 1.1-1.2x slower than its int8 x int8 kernels on MiniLM, with the same graph.
So an int4 file can carry a hint, a metadata entry, that asks tfdeploy's runtime (the
evaluation, the benchmark and the server all load through ``tflite.interpreter``) to widen
those weights to int8 in memory when it loads the file. The values and their scales are
unchanged, so the outputs are the same. The file on disk stays int4 and standard: stock
LiteRT ignores the entry and runs the int4 kernels (on ARM those may be the faster ones).

Which kernels are faster depends on the CPU. The 1.1-1.2x above was measured on the
machine this project started on, an x86 CPU with AMX (XNNPACK has AMX kernels for int8 x
int8 that take 64 output columns a tile; its int4 ones take 16). On an AVX-512-VNNI CPU
without AMX (AMD Zen 4) the int4 kernels were the faster ones: 0.90x of the int8 kernels
at 16 tokens, 0.97x at 128. So the default hint, "auto", widens only where the CPU has
AMX-INT8; "int8" always widens.
"""
import mmap
import struct

import numpy as np

HINT = b"tfdeploy_int4_kernels"
HINTS = ("int8", "auto")  # the values a file's hint can hold


def resolve(kernels):
    """"int8" or "int4": the kernels that ``kernels`` (a hint or the recipe's setting)
    means on this CPU."""
    if kernels == "auto":
        return "int8" if "amx_int8" in cpu_flags() else "int4"
    return kernels


def cpu_flags():
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def mark(data, kernels):
    """``data`` (.tflite bytes) with the hint for ``kernels`` ("int8" widens at load, "auto"
    widens on a CPU with AMX-INT8, "int4" runs the int4 kernels: no hint); unchanged when
    no FULLY_CONNECTED has an int4 weight."""
    if kernels not in HINTS:
        return data
    model = _load(data)
    if not _int4_weights(model):
        return data
    s = _schema()
    buffer = s.BufferT()
    buffer.data = np.frombuffer(kernels.encode(), np.uint8)
    model.buffers.append(buffer)
    entry = s.MetadataT()
    entry.name, entry.buffer = HINT, len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name != HINT] + [entry]
    return _save(model)


def _load(data):
    """The model object of .tflite bytes, with the data of buffers stored past the
    flatbuffer (the quantizer writes them by offset) moved into the buffers, as numpy arrays
    (the flatbuffers builder writes those in one copy, lists byte by byte)."""
    s = _schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for buffer in model.buffers:
        if buffer.offset:
            buffer.data = np.frombuffer(data, np.uint8, buffer.size, buffer.offset)
            buffer.offset = buffer.size = 0
    for graph in model.subgraphs:
        for op in graph.operators:
            if op.largeCustomOptionsOffset:
                start = op.largeCustomOptionsOffset
                op.customOptions = np.frombuffer(data, np.uint8, op.largeCustomOptionsSize,
                                                 start)
                op.largeCustomOptionsOffset = op.largeCustomOptionsSize = 0
    return model


def _save(model):
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def wants_int8(path):
    """Whether the file at ``path`` asks for int8 kernels on this CPU. Reads only the
    metadata (the file is mapped, not read: fp32 files are large). False for a file that is
    not a TFLite flatbuffer: loading it then fails with LiteRT's own error."""
    s = _schema()
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[4:8] != b"TFL3":
                return False
            model = s.Model.GetRootAs(data, 0)
            for i in range(model.MetadataLength()):
                entry = model.Metadata(i)
                if entry.Name() == HINT:
                    hint = bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode()
                    return hint in HINTS and resolve(hint) == "int8"
    except (OSError, ValueError, IndexError, struct.error):
        return False
    return False


def widen(data):
    """``data`` with every int4 FULLY_CONNECTED weight stored as int8 (same values, same
    per-channel scales; XNNPACK then gives the same outputs: identical logits on MiniLM).
    Blockwise int4 weights stay int4: the int8 kernels take no blocks."""
    s = _schema()
    model = _load(data)
    widened = set()
    for tensor in _int4_weights(model):
        if tensor.buffer not in widened:  # tensors can share a buffer
            raw = model.buffers[tensor.buffer]
            raw.data = unpack_int4(raw.data, int(np.prod(tensor.shape))).view(np.uint8)
            widened.add(tensor.buffer)
        tensor.type = s.TensorType.INT8
    return _save(model)


def unpack_int4(packed, count):
    """Signed int4 values packed two a byte, the first in the low nibble -> int8 array."""
    packed = np.asarray(packed, np.uint8)
    values = np.empty(packed.size * 2, np.int8)
    values[0::2], values[1::2] = packed & 0x0F, packed >> 4
    return np.where(values > 7, values - 16, values).astype(np.int8)[:count]


def _int4_weights(model):
    """The constant int4 weights of FULLY_CONNECTED ops without blockwise scales, each once."""
    s = _schema()
    found = {}
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != \
                    s.BuiltinOperator.FULLY_CONNECTED or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            weight = graph.tensors[op.inputs[1]]
            blockwise = weight.quantization is not None and \
                weight.quantization.detailsType != s.QuantizationDetails.NONE
            data = model.buffers[weight.buffer].data
            if weight.type == s.TensorType.INT4 and not blockwise and data is not None \
                    and len(data):
                found[id(weight)] = weight
    return list(found.values())
