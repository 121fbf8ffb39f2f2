"""A tiny random Llama with a word-level tokenizer, built in code (no files, no downloads).

It exists for fast unit tests: 2 layers, 4 query heads sharing 2 key/value heads
(so grouped-query attention is exercised), d_model 64. Its outputs are noise.
"""

from __future__ import annotations

import torch

_WORDS = (
    "<bos> <eos> <pad> <unk> the a cat dog sat on mat is in of city paris tower and . , "
    "user likes writes news headline article about food travel sport music why how new best"
).split()


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces when decoding
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
    )
    # TransformerBridge pops init_kwargs["name_or_path"]; an in-memory tokenizer has none.
    tok.init_kwargs.setdefault("name_or_path", "tiny-random")
    return tok


def make_tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32):
    """Return ``(hf_model, tokenizer)`` for the tiny random Llama (deterministic for a seed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        hf = LlamaForCausalLM(cfg).to(dtype).eval()
    return hf, tok
