"""Tiny randomly initialised Qwen2-architecture models and a matching tokenizer, built offline.

The tokenizer is a byte-level BPE trained on a few sentences, with Qwen's special tokens and a
Qwen-style chat template. The models have more vocabulary rows than the tokenizer has tokens,
like Qwen2.5 (151,936 rows for 151,665 tokens), so the code under test must ignore those rows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? Please reason step by step.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "The answer is 72. So the total is 48 + 24 = 72 clips. Let x be the number of apples.",
    "0 1 2 3 4 5 6 7 8 9 10 + - * / = ( ) . , ? ! boxed {} \\ # answer step",
]
VOCAB_ROWS = 320  # model rows; the tokenizer has fewer tokens


def make_tokenizer(vocab_size: int = 280, corpus: list[str] = CORPUS) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    assert len(tokenizer) < VOCAB_ROWS
    return tokenizer


def make_model(seed: int, *, layers: int = 2, hidden: int = 32, init_range: float = 0.3) -> Qwen2ForCausalLM:
    """A random model whose next-token distributions are peaked enough to give real contrasts."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB_ROWS, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
        initializer_range=init_range, tie_word_embeddings=False, bos_token_id=None, eos_token_id=2,
        pad_token_id=0,
    )
    return Qwen2ForCausalLM(config).eval()


def save_pair(root: Path, *, expert_seed: int = 1, amateur_seed: int = 2) -> tuple[Path, Path]:
    """Save a tiny expert (3 layers) and amateur (1 layer) with one shared tokenizer."""
    tokenizer = make_tokenizer()
    paths = []
    for name, seed, layers in (("expert", expert_seed, 3), ("amateur", amateur_seed, 1)):
        path = root / name
        model = make_model(seed, layers=layers)
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]
