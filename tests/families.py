"""Tiny random checkpoints of the main model families, built in code (no download).

Each builder returns a Hugging Face config for a 2-layer model with small widths and the
word-level test tokenizer's vocabulary; :func:`save_family` writes model and tokenizer to a
directory the way a user's ``save_pretrained`` checkpoint looks, for ``load_model(path)``.

:func:`raw_modules` says, for each family, which Hugging Face modules an intervention touches,
so the tests can build independent references with plain torch hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from workbench.core._tiny import make_tiny_tokenizer

D, LAYERS, HEADS, KV, D_HEAD, FF = 64, 2, 4, 2, 16, 128
# Gemma 2 / 3 alternate sliding-window and global layers; a window shorter than the test
# prompts makes the sliding layers really slide.
WINDOW = 6


def _common(tok) -> dict:
    return dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, tie_word_embeddings=False)


def _llama_like(cls_name: str, **extra) -> Callable[[Any], Any]:
    def build(tok):
        import transformers

        cls = getattr(transformers, cls_name)
        return cls(hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                   num_key_value_heads=KV, max_position_embeddings=256, **_common(tok), **extra)

    return build


def _gpt2(tok):
    from transformers import GPT2Config

    c = _common(tok)
    c.pop("tie_word_embeddings")
    return GPT2Config(n_embd=D, n_layer=LAYERS, n_head=HEADS, n_inner=FF, n_positions=256, **c)


def _neox(tok):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FF,
                         max_position_embeddings=256, rotary_pct=0.5, **_common(tok))


def _bloom(tok):
    from transformers import BloomConfig

    c = _common(tok)
    c.pop("tie_word_embeddings")
    return BloomConfig(hidden_size=D, n_layer=LAYERS, n_head=HEADS, **c)


def _gemma3(tok):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            num_key_value_heads=KV, head_dim=D_HEAD, query_pre_attn_scalar=D_HEAD,
                            sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"],
                            max_position_embeddings=256, **_common(tok))


FAMILIES: dict[str, Callable[[Any], Any]] = {
    "llama": _llama_like("LlamaConfig"),
    "qwen2": _llama_like("Qwen2Config"),
    "qwen3": _llama_like("Qwen3Config", head_dim=D_HEAD),
    "mistral": _llama_like("MistralConfig", sliding_window=WINDOW),
    "gemma2": _llama_like("Gemma2Config", head_dim=D_HEAD, query_pre_attn_scalar=D_HEAD, sliding_window=WINDOW,
                          layer_types=["sliding_attention", "full_attention"]),
    "gemma3": _gemma3,
    "phi3": _llama_like("Phi3Config"),
    "olmo2": _llama_like("Olmo2Config"),
    "gpt2": _gpt2,
    "gpt_neox": _neox,
    # others the bridge supports, each a different shape of block
    "gemma": _llama_like("GemmaConfig", head_dim=D_HEAD),  # Gemma 1
    "mixtral": _llama_like("MixtralConfig", num_local_experts=4, num_experts_per_tok=2, sliding_window=None),  # MoE MLP
    "bloom": _bloom,  # ALiBi: no position embedding of any kind
}


def make_bpe_tokenizer():
    """A byte-level BPE tokenizer trained in code on the test words. Qwen 2 checkpoints need one:
    transformers loads every ``qwen2`` checkpoint's tokenizer as ``Qwen2Tokenizer`` (byte-level
    BPE), which maps the word-level test vocabulary's words to unknown tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from workbench.core._tiny import _WORDS

    words = [w for w in _WORDS if not w.startswith("<")]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<bos>", "<eos>", "<pad>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator([" ".join(words[i:] + words[:i]) for i in range(len(words))], trainer)
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                      special_tokens=[("<bos>", tk.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def save_family(family: str, directory: Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of ``family`` (model + tokenizer) to ``directory``."""
    from transformers import AutoModelForCausalLM

    tok = make_bpe_tokenizer() if family == "qwen2" else make_tiny_tokenizer()
    config = FAMILIES[family](tok)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # Random init leaves some weights at exactly 0 or 1 (norm scales, biases): give every
        # parameter noise, so that no check passes because a weight happens to be trivial.
        with torch.no_grad():
            for p in hf.parameters():
                p.add_((0.2 if p.dim() > 1 else 0.1) * torch.randn_like(p))
            # Nothing stops generation early: the stop token's logit is 0 (others are spread around it).
            hf.get_output_embeddings().weight[tok.eos_token_id] = 0.0
    directory.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


# ---- where each intervention lands in the Hugging Face modules -------------------------------

@dataclass
class Raw:
    """The Hugging Face modules of one layer that the raw-hook references use."""

    layer: torch.nn.Module  # the decoder block
    attn: torch.nn.Module  # self-attention
    o_proj: torch.nn.Module  # output projection; its input is the heads' outputs side by side
    attn_to_resid: torch.nn.Module  # its output is what attention adds to the residual stream
    mlp_to_resid: torch.nn.Module  # its output is what the MLP adds to the residual stream
    query: Callable[[torch.Tensor, int, float], torch.Tensor]  # (module output, head, keep) -> output
    query_module: torch.nn.Module  # the module whose output holds the (normed) queries


def raw_modules(family: str, hf: Any, layer: int) -> Raw:
    d = _d_head(hf.config)

    def flat(stride: int):
        """Scale head ``h``'s query in a ``[..., features]`` output where it sits at ``h * stride``."""
        def scale(out: torch.Tensor, head: int, keep: float) -> torch.Tensor:
            out = out.clone()
            out[..., head * stride:head * stride + d] *= keep
            return out

        return scale

    def per_head(axis: int):
        """Scale head ``h``'s query in a per-head norm's output with heads on ``axis``."""
        def scale(out: torch.Tensor, head: int, keep: float) -> torch.Tensor:
            out = out.clone()
            out.select(axis, head).mul_(keep)
            return out

        return scale

    if family == "gpt2":
        blk = hf.transformer.h[layer]  # c_attn's output is [q | k | v]
        return Raw(blk, blk.attn, blk.attn.c_proj, blk.attn, blk.mlp, flat(d), blk.attn.c_attn)
    if family == "gpt_neox":
        blk = hf.gpt_neox.layers[layer]  # query_key_value's output is [.., head, (q k v), d_head]
        return Raw(blk, blk.attention, blk.attention.dense, blk.attention, blk.mlp, flat(3 * d),
                   blk.attention.query_key_value)
    if family == "bloom":
        blk = hf.transformer.h[layer]  # query_key_value's output is [.., head, (q k v), d_head] per head;
        attn = blk.self_attention  # dense and dense_4h_to_h feed the residual additions inside the modules
        return Raw(blk, attn, attn.dense, attn.dense, blk.mlp.dense_4h_to_h, flat(3 * d), attn.query_key_value)
    blk = hf.model.layers[layer]
    attn = blk.self_attn
    if family in ("gemma2", "gemma3", "olmo2"):  # norms after attention and MLP, before the residual
        a2r, m2r = blk.post_attention_layernorm, blk.post_feedforward_layernorm
    else:
        a2r, m2r = attn, blk.mlp
    if family == "phi3":  # qkv_proj's output is [q | k | v]
        return Raw(blk, attn, attn.o_proj, a2r, m2r, flat(d), attn.qkv_proj)
    if family in ("qwen3", "gemma3"):  # a norm per head: Qwen 3 before the transpose, Gemma 3 after it
        return Raw(blk, attn, attn.o_proj, a2r, m2r, per_head(2 if family == "qwen3" else 1), attn.q_norm)
    if family == "olmo2":  # one norm over all heads' queries together
        return Raw(blk, attn, attn.o_proj, a2r, m2r, flat(d), attn.q_norm)
    return Raw(blk, attn, attn.o_proj, a2r, m2r, flat(d), attn.q_proj)


def _d_head(config: Any) -> int:
    hd = getattr(config, "head_dim", None)
    if hd:
        return int(hd)
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    return hidden // heads
