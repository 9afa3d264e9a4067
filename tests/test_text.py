"""Tests for lesson_lib.text: the word tokenizer, prompt templates and dropout, the text encoder."""

import pytest
import torch

from lesson_lib.text import (
    DIGIT_WORDS,
    MAX_TOKENS,
    PAD_ID,
    TEMPLATES,
    VOCAB,
    TextEncoder,
    TextEncoderConfig,
    detokenize,
    make_prompt,
    padding_mask,
    random_prompts,
    split_words,
    tokenize,
)


def test_round_trip_lowercases_and_drops_punctuation():
    prompts = ["A handwritten Seven!", "the digit 3.", "  nine ", "", "the number, zero"]
    ids = tokenize(prompts)
    assert ids.shape == (5, MAX_TOKENS) and ids.dtype == torch.long
    assert detokenize(ids) == ["a handwritten seven", "the digit 3", "nine", "", "the number zero"]
    assert ids[2].tolist() == [VOCAB.index("nine")] + [PAD_ID] * (MAX_TOKENS - 1)
    assert torch.equal(tokenize("nine"), ids[2:3])  # one string = a list of one


def test_empty_prompt_is_all_padding():
    ids = tokenize(["", "seven"])
    assert torch.all(ids[0] == PAD_ID)
    mask = padding_mask(ids)
    assert mask.dtype == torch.bool
    assert not mask[0].any() and mask[1].tolist() == [True] + [False] * (MAX_TOKENS - 1)


def test_every_template_tokenizes_for_every_digit():
    for template in TEMPLATES:
        prompts = [make_prompt(template, d) for d in range(10)]
        assert detokenize(tokenize(prompts)) == prompts
    assert make_prompt("the digit {numeral}", 3) == "the digit 3"
    assert make_prompt("a handwritten {word}", 7) == "a handwritten seven"


def test_unknown_word_lists_the_vocabulary():
    with pytest.raises(ValueError, match="'eleven'") as info:
        tokenize(["seven", "a handwritten eleven"])
    for word in ("zero", "nine", "7", "handwritten", "digit"):
        assert repr(word) in str(info.value)
    with pytest.raises(ValueError, match="'37'"):
        split_words("the digit 37")  # one numeral per digit


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: tokenize([3]), TypeError, "prompts"),
        (lambda: tokenize("a " * 9 + "seven"), ValueError, "length"),
        (lambda: tokenize("seven", length=0), ValueError, "length"),
        (lambda: split_words(None), TypeError, "prompt"),
        (lambda: detokenize(torch.zeros(2, 3)), ValueError, "tokens"),
        (lambda: padding_mask(torch.full((1, 3), len(VOCAB))), ValueError, "tokens"),
        (lambda: make_prompt("{word}", 10), ValueError, "digit"),
        (lambda: random_prompts(torch.tensor([1.0])), TypeError, "labels"),
        (lambda: random_prompts(torch.tensor([10])), ValueError, "labels"),
        (lambda: random_prompts(torch.tensor([1]), p_empty=1.5), ValueError, "p_empty"),
        (lambda: TextEncoderConfig(width=10, heads=4), ValueError, "width"),
    ],
)
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()


def test_random_prompts_match_labels_and_drop_to_empty():
    labels = torch.arange(10).repeat(200)  # (2000,)
    gen = torch.Generator().manual_seed(0)
    prompts = random_prompts(labels, gen, p_empty=0.1)
    again = random_prompts(labels, torch.Generator().manual_seed(0), p_empty=0.1)
    assert prompts == again  # seeded: exact
    empty = [p == "" for p in prompts]
    assert abs(sum(empty) / len(prompts) - 0.1) < 0.03
    templates_seen = set()
    for prompt, label in zip(prompts, labels.tolist(), strict=True):
        if prompt:
            words = split_words(prompt)
            assert words[-1] in (DIGIT_WORDS[label], str(label))
            templates_seen.add(tuple(words[:-1]))
    assert len(templates_seen) == len(TEMPLATES)  # every template drawn
    assert all(random_prompts(labels[:50], p_empty=0.0))
    assert random_prompts(labels[:50], p_empty=1.0) == [""] * 50


def small_encoder(seed=0):
    torch.manual_seed(seed)
    return TextEncoder(TextEncoderConfig(width=16, heads=2)).eval()


def test_encoder_shapes_mask_and_padding():
    encoder = small_encoder()
    ids = tokenize(["a handwritten seven", "", "nine"])
    context, mask = encoder(ids)
    assert context.shape == (3, MAX_TOKENS, 16) and torch.equal(mask, padding_mask(ids))
    assert torch.isfinite(context).all()
    assert torch.all(context[~mask] == 0)  # padding, and the whole empty prompt, are zeros
    assert context[0, :3].abs().sum(-1).min() > 0
    # Padding is invisible: fewer pad positions or other prompts in the batch change nothing.
    short, _ = encoder(tokenize(["a handwritten seven"], length=3))
    assert torch.allclose(short[0], context[0, :3], atol=1e-5)
    alone, _ = encoder(ids[2:])
    assert torch.allclose(alone[0], context[2], atol=1e-5)
    # Order matters (positional embeddings).
    swapped, _ = encoder(tokenize(["seven handwritten a"]))
    assert not torch.allclose(swapped[0, 0], context[0, 2], atol=1e-3)


def test_encoder_rejects_bad_tokens():
    encoder = small_encoder()
    with pytest.raises(ValueError, match="tokens"):
        encoder(torch.zeros(2, MAX_TOKENS))  # float
    with pytest.raises(ValueError, match="max_tokens"):
        encoder(torch.zeros(2, MAX_TOKENS + 1, dtype=torch.long))
