"""A toy text encoder for prompts such as "a handwritten seven": tokenizer, prompts, transformer.

Stable Diffusion reads its prompt with CLIP's text transformer (Radford et al. 2021): words become
tokens, tokens become vectors, and a transformer encoder (Vaswani et al. 2017) lets each vector
see the others. The U-Net then looks at these vectors through cross-attention (Rombach et al.
2022, Sec. 3.3). Here the same pipeline is scaled down to what MNIST needs:

- a word-level tokenizer over a fixed vocabulary of a few dozen words (``VOCAB``): digits as
  words ("seven") and numerals ("7"), the template words, and the padding token ``<pad>``;
- prompt templates (``TEMPLATES``) and ``random_prompts`` for training, which replaces a fraction
  of prompts by the empty prompt "" (prompt dropout, Ho & Salimans 2022);
- ``TextEncoder``: token + positional embeddings and a 2-layer transformer encoder, returning the
  context (B, L, D) and its mask (B, L).

The empty prompt "" is all padding: its mask is all False, so cross-attention has no token to
look at. That is the unconditional branch of classifier-free guidance.

Shapes: B prompts, L = ``MAX_TOKENS`` token positions, D = ``width``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .checks import check_int, check_labels, check_real, check_tensor

__all__ = [
    "PAD",
    "PAD_ID",
    "MAX_TOKENS",
    "DIGIT_WORDS",
    "VOCAB",
    "TEMPLATES",
    "split_words",
    "tokenize",
    "detokenize",
    "padding_mask",
    "make_prompt",
    "random_prompts",
    "TextEncoderConfig",
    "TextEncoder",
]

PAD = "<pad>"
PAD_ID = 0  # the id of PAD; rows of PAD_ID are the empty prompt
MAX_TOKENS = 8  # L: every prompt is padded to this many tokens
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATE_WORDS = ("a", "the", "handwritten", "digit", "number")
VOCAB: tuple[str, ...] = (PAD, *DIGIT_WORDS, *map(str, range(10)), *TEMPLATE_WORDS)
WORD_TO_ID = {word: i for i, word in enumerate(VOCAB)}

# The prompts the model is trained on; {word} is "seven", {numeral} is "7".
TEMPLATES = (
    "a handwritten {word}",
    "the digit {numeral}",
    "{word}",
    "a {word}",
    "the number {word}",
)


# ----------------------------------------------------------------------------- the tokenizer


def split_words(prompt: str) -> list[str]:
    """Lower-case ``prompt`` and split it into words at spaces and punctuation.

    "A handwritten Seven!" -> ["a", "handwritten", "seven"]; "" -> []. Raises ValueError for a
    word outside ``VOCAB``, listing the vocabulary.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {prompt!r} ({type(prompt).__name__})")
    words = re.findall(r"[^\W_]+", prompt.lower())  # runs of letters and digits
    unknown = [w for w in words if w not in WORD_TO_ID]
    if unknown:
        known = ", ".join(repr(w) for w in VOCAB if w != PAD)
        raise ValueError(
            f"prompt={prompt!r} has words outside the vocabulary: {', '.join(map(repr, unknown))}."
            f" Allowed words: {known}"
        )
    return words


def tokenize(prompts: str | Sequence[str], length: int = MAX_TOKENS) -> torch.Tensor:
    """Token ids of each prompt, padded with ``PAD_ID``: B prompts -> (B, length) long.

    A single string counts as a list of one prompt. The empty prompt "" gives a row of PAD_ID.
    """
    length = check_int("length", length, low=1)
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a str or a list of str, got {prompts!r:.200}")
    ids = torch.full((len(prompts), length), PAD_ID, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        words = split_words(prompt)
        if len(words) > length:
            raise ValueError(
                f"prompt={prompt!r} has {len(words)} words: allowed at most length={length}"
            )
        ids[i, : len(words)] = torch.tensor([WORD_TO_ID[w] for w in words], dtype=torch.long)
    return ids


def _check_tokens(name: str, tokens) -> torch.Tensor:
    check_tensor(name, tokens)
    if tokens.dtype != torch.long or tokens.ndim != 2:
        raise ValueError(
            f"{name} must be a (B, L) torch.long tensor of token ids (see tokenize), "
            f"got dtype {tokens.dtype} and shape {tuple(tokens.shape)}"
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= len(VOCAB)):
        raise ValueError(
            f"{name} has ids in [{int(tokens.min())}, {int(tokens.max())}]: "
            f"allowed 0 <= {name} <= {len(VOCAB) - 1} (len(VOCAB) - 1)"
        )
    return tokens


def detokenize(tokens: torch.Tensor) -> list[str]:
    """The prompts back from token ids (B, L), lower-case, one space between words, no padding."""
    _check_tokens("tokens", tokens)
    return [" ".join(VOCAB[i] for i in row if i != PAD_ID) for row in tokens.tolist()]


def padding_mask(tokens: torch.Tensor) -> torch.Tensor:
    """True for real tokens, False for padding: (B, L) long -> (B, L) bool."""
    return _check_tokens("tokens", tokens) != PAD_ID


# ----------------------------------------------------------------------------- prompts


def make_prompt(template: str, digit: int) -> str:
    """``template`` filled in for ``digit``: ("the digit {numeral}", 3) -> "the digit 3"."""
    digit = check_int("digit", digit, low=0, high=9)
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {template!r}")
    return template.format(word=DIGIT_WORDS[digit], numeral=str(digit))


def random_prompts(
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    p_empty: float = 0.1,
    templates: Sequence[str] = TEMPLATES,
) -> list[str]:
    """One prompt per label (B,): a random template filled in with the digit, or "" (the
    empty prompt) with probability ``p_empty`` (prompt dropout for classifier-free guidance).

    The draws come from ``generator`` on its own device (the CPU if None).
    """
    check_labels("labels", labels, 9, note="(digits)")
    p_empty = check_real("p_empty", p_empty, 0.0, 1.0)
    if isinstance(templates, str) or not templates:
        raise ValueError(f"templates must be a non-empty list of str, got {templates!r}")
    device = generator.device if generator is not None else torch.device("cpu")
    B = labels.shape[0]
    which = torch.randint(0, len(templates), (B,), generator=generator, device=device).tolist()
    empty = (torch.rand(B, generator=generator, device=device) < p_empty).tolist()
    return [
        "" if e else make_prompt(templates[k], d)
        for k, e, d in zip(which, empty, labels.tolist(), strict=True)
    ]


# ----------------------------------------------------------------------------- the encoder


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = len(VOCAB)  # token ids 0 ... vocab_size - 1
    max_tokens: int = MAX_TOKENS  # L: positions with a learned positional embedding
    width: int = 64  # D: embedding width = the U-Net's context_dim
    layers: int = 2  # transformer encoder layers
    heads: int = 4  # attention heads per layer; must divide width
    ff_mult: int = 2  # feed-forward width = ff_mult * width (Vaswani et al. 2017 used 4)
    dropout: float = 0.0  # dropout inside the transformer layers

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, low=2)
        check_int("max_tokens", self.max_tokens, low=1)
        check_int("width", self.width, low=1)
        check_int("layers", self.layers, low=1)
        check_int("heads", self.heads, low=1)
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be divisible by heads={self.heads}")
        check_int("ff_mult", self.ff_mult, low=1)
        check_real("dropout", self.dropout, 0.0, 1.0, high_open=True)


class TextEncoder(nn.Module):
    """Token ids (B, L) -> context (B, L, D) and mask (B, L), True for real tokens.

    Token embedding + learned positional embedding (as CLIP's text encoder; Vaswani et al. 2017
    used fixed sinusoids), ``layers`` pre-norm transformer encoder layers that ignore padding, a
    final LayerNorm. Padding positions come out as exact zeros; the empty prompt is all zeros
    with an all-False mask.
    """

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__()
        c = self.config = config if config is not None else TextEncoderConfig()
        self.token_embed = nn.Embedding(c.vocab_size, c.width)
        self.pos_embed = nn.Parameter(torch.randn(c.max_tokens, c.width) * 0.02)  # (L, D)
        layer = nn.TransformerEncoderLayer(
            c.width,
            c.heads,
            c.ff_mult * c.width,
            c.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, c.layers, enable_nested_tensor=False
        )  # Vaswani et al. 2017, Sec. 3.1
        self.norm = nn.LayerNorm(c.width)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L) long, L <= max_tokens -> (context (B, L, D), mask (B, L) bool)."""
        mask = padding_mask(tokens)  # (B, L)
        L = tokens.shape[1]
        if L > self.config.max_tokens:
            raise ValueError(
                f"tokens has L={L} positions: allowed at most max_tokens={self.config.max_tokens}"
            )
        if tokens.numel() and int(tokens.max()) >= self.config.vocab_size:
            raise ValueError(
                f"tokens has ids up to {int(tokens.max())}: allowed < vocab_size="
                f"{self.config.vocab_size}"
            )
        h = self.token_embed(tokens) + self.pos_embed[:L]  # (B, L, D)
        # An all-padding row (the empty prompt) may not mask every key (softmax of nothing is
        # NaN): let it attend to its padding, then zero it below.
        ignore = ~mask & mask.any(dim=1, keepdim=True)  # (B, L), True = key to ignore
        h = self.norm(self.transformer(h, src_key_padding_mask=ignore))  # (B, L, D)
        return h * mask[..., None], mask
