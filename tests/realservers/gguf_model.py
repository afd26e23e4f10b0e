"""Random-weight llama GGUF files for llama-server, written offline with the `gguf` package.

The tokenizer (vocabulary, scores, token types, special ids) is copied from one of llama.cpp's
vocab-only `models/ggml-vocab-*.gguf` files, which tests/peers/llama_server.sh keeps beside the
binary, so prompts tokenize as with a real model. Weights are small random numbers: the model
talks nonsense, but it loads, answers /health, and generates at a real decode pace.

Two sizes: `tiny` (a few MB, loads in well under a second) and `big` (~1.9 GB of f16, so
"Loading model" lasts a few seconds with --load-mode none, which reads the whole file).
"""

import os
import sys
from typing import Dict, Tuple

import numpy as np

# (hidden, layers, heads, ffn, f16): head size hidden/heads
GGUF_SIZES: Dict[str, Tuple[int, int, int, int, bool]] = {
    "tiny": (64, 2, 4, 128, False),
    "big": (2048, 16, 16, 5632, True),
}
GGUF_CONTEXT = 8192


def _copy_tokenizer(writer, vocab_path: str) -> int:
    """Copy every tokenizer.* key of the vocab-only file; returns the vocabulary size."""
    import gguf
    reader = gguf.GGUFReader(vocab_path)
    vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                values = [bytes(field.parts[i]) for i in field.data]
            else:
                values = [field.parts[i][0].item() for i in field.data]
            writer.add_array(name, values)
            if name == "tokenizer.ggml.tokens":
                vocab = len(values)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8"))
        elif kind == gguf.GGUFValueType.BOOL:
            writer.add_bool(name, bool(field.parts[field.data[0]][0]))
        elif kind == gguf.GGUFValueType.UINT32:
            writer.add_uint32(name, int(field.parts[field.data[0]][0]))
        elif kind == gguf.GGUFValueType.INT32:
            writer.add_int32(name, int(field.parts[field.data[0]][0]))
        elif kind == gguf.GGUFValueType.FLOAT32:
            writer.add_float32(name, float(field.parts[field.data[0]][0]))
    if not vocab:
        raise ValueError("%s has no tokenizer.ggml.tokens" % vocab_path)
    return vocab


def write_gguf_model(path: str, vocab_path: str, size: str = "tiny", seed: int = 0) -> str:
    """Write a random-weight llama model of `size` to `path` (atomically); returns `path`."""
    import gguf
    hidden, layers, heads, ffn, f16 = GGUF_SIZES[size]
    rng = np.random.default_rng(seed)
    dtype = np.float16 if f16 else np.float32
    tmp = path + ".part"
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name("probed-test-%s" % size)
    writer.add_context_length(GGUF_CONTEXT)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(1 if f16 else 0)
    vocab = _copy_tokenizer(writer, vocab_path)
    # One random block reused for every tensor of a shape: the content does not matter, and
    # generating 1 GB of fresh randomness would take longer than the test that uses it.
    blocks: Dict[Tuple[int, ...], np.ndarray] = {}

    def weights(*shape: int) -> np.ndarray:
        if shape not in blocks:
            blocks[shape] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)
        return blocks[shape]

    ones = np.ones(hidden, dtype=np.float32)
    writer.add_tensor("token_embd.weight", weights(vocab, hidden))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", weights(vocab, hidden))
    for i in range(layers):
        blk = "blk.%d." % i
        writer.add_tensor(blk + "attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(blk + name + ".weight", weights(hidden, hidden))
        writer.add_tensor(blk + "ffn_norm.weight", ones)
        writer.add_tensor(blk + "ffn_gate.weight", weights(ffn, hidden))
        writer.add_tensor(blk + "ffn_up.weight", weights(ffn, hidden))
        writer.add_tensor(blk + "ffn_down.weight", weights(hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


if __name__ == "__main__":  # python gguf_model.py OUT VOCAB [tiny|big]
    print(write_gguf_model(sys.argv[1], sys.argv[2], *sys.argv[3:4]))
