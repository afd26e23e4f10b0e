"""A tiny random-weight Llama for vLLM, written offline. Run by the vLLM venv's python
(it has `transformers` and `tokenizers`): `python hf_model.py OUT_DIR`.

The tokenizer is a byte-level BPE trained here on one paragraph (so nothing is downloaded),
saved as a fast tokenizer with a chat template, so both /v1/completions and
/v1/chat/completions work. Head size 32 (hidden 128, 4 heads): vLLM's CPU attention backend
supports head sizes 32, 64, 80, ...; smaller ones are refused at start.

Two sizes: `tiny` (hidden 128, 2 layers: ~1 ms a token) and `slow` (hidden 1024, 8 layers,
~400 MB: tens of ms a token on one core), so a few requests keep the engine busy for seconds
without a burst of dozens, whose handling starves every other process on a 2-core machine.
"""

import json
import os
import sys

PARAGRAPH = (
    "A probe asks a server whether it is alive, ready and started. The kubelet restarts a "
    "container whose liveness fails and sends no traffic to a pod that is not ready. A model "
    "server loads its weights, warms up, answers requests, sleeps, wakes, drains and exits. "
    "Tokens are generated one step at a time; a stalled engine generates none. Hello there, "
    "how are you today? I am fine, thank you. The quick brown fox jumps over the lazy dog. "
    "0123456789 ,.;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`\n")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
VOCAB = 512
SIZES = {"tiny": (128, 2, 4, 256), "slow": (1024, 8, 16, 2816)}  # hidden, layers, heads, ffn


def write_tokenizer(out: str) -> int:
    """Train a byte-level BPE on PARAGRAPH and save it as a fast tokenizer; its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([PARAGRAPH] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return len(fast)


def write_model(out: str, size: str = "tiny") -> str:
    """Write tokenizer, config and random weights of `size` to `out`; returns `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    hidden, layers, heads, ffn = SIZES[size]
    os.makedirs(out, exist_ok=True)
    vocab = write_tokenizer(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, max_position_embeddings=2048,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2,
                         torch_dtype="float32", tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}, f)
    return out


if __name__ == "__main__":  # python hf_model.py OUT_DIR [tiny|slow]
    print(write_model(sys.argv[1], *sys.argv[2:3]))
