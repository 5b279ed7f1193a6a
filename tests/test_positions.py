import pytest
import torch
from tok_fixtures import ALL

import nnshift.positions as P
from nnshift.errors import PositionError, TokenOfInterestError


def _answer(tok, text):
    return tok.encode(text, add_special_tokens=False)


def _token_text(tok, ids, k):
    return tok.convert_ids_to_tokens([ids[k]])[0]


@pytest.mark.parametrize("family", sorted(ALL))
@pytest.mark.parametrize(
    ("answer", "word", "expected_start"),
    [
        ("a red circle and a blue square", "circle", "circle"),
        ("there are 3 circles and 1 square", "1", "1"),
        ("there are 3 circles and 1 square", "3", "3"),
        ("a triangle and 1 hexagon", "triangle", "t"),
        ("a triangle and 1 hexagon", "hexagon", "he"),
    ],
)
def test_toi_first_token_of_whole_word(family, answer, word, expected_start):
    tok = ALL[family]()
    ids = _answer(tok, answer)
    k = P.find_word_token(tok, ids, P.token_of_interest(word))
    assert k is not None
    piece = _token_text(tok, ids, k).replace("▁", "").replace("Ġ", "")
    assert piece, f"{family}: matched a bare marker token"
    assert piece.startswith(expected_start)
    # decoding from that token on starts with the word (modulo the leading space)
    assert tok.decode(ids[k:]).strip().startswith(word)
    # and no earlier token decodes to a prefix that already contains the word
    assert word not in tok.decode(ids[:k]).split()


@pytest.mark.parametrize("family", sorted(ALL))
def test_toi_whole_words_only(family):
    tok = ALL[family]()
    # "circles" is not "circle" without variants; "red" must not match inside another word
    assert P.find_word_token(tok, _answer(tok, "there are 3 circles"), P.token_of_interest("circle")) is None
    assert P.find_word_token(tok, _answer(tok, "a square and another square"), P.token_of_interest("red")) is None
    k = P.find_word_token(tok, _answer(tok, "there are 3 circles"), P.token_of_interest("circle", variants=True))
    assert k is not None


@pytest.mark.parametrize("family", sorted(ALL))
def test_toi_digits_distinguished(family):
    tok = ALL[family]()
    ids = _answer(tok, "1 square and 3 circles")
    k1 = P.find_word_token(tok, ids, P.token_of_interest("1"))
    k3 = P.find_word_token(tok, ids, P.token_of_interest("3"))
    assert k1 is not None and k3 is not None and k1 != k3
    assert _token_text(tok, ids, k3).endswith("3")
    assert P.find_word_token(tok, ids, P.token_of_interest("2")) is None


def test_toi_first_occurrence():
    tok = ALL["llama"]()
    ids = _answer(tok, "a circle , a circle and another circle")
    k = P.find_word_token(tok, ids, P.token_of_interest("circle"))
    assert k == 1


def test_toi_capitalised_variant():
    tok = ALL["gpt2"]()
    ids = _answer(tok, "Circle on the grass")
    assert P.find_word_token(tok, ids, P.token_of_interest("circle")) is None
    assert P.find_word_token(tok, ids, P.token_of_interest("circle", variants=True)) == 0


@pytest.mark.parametrize("bad", ["", "  ", "two words"])
def test_toi_bad_word(bad):
    with pytest.raises(TokenOfInterestError):
        P.token_of_interest(bad)


def test_empty_answer():
    assert P.find_word_token(ALL["gpt2"](), [], P.token_of_interest("circle")) is None


def test_prefill_masks_left_padding():
    attn = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    img = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    assert P.all().prefill_mask(attn, img).tolist() == attn.bool().tolist()
    assert P.last_prompt().prefill_mask(attn, img)[:, -1].all()
    assert P.last_prompt().prefill_mask(attn, img).sum() == 2
    assert P.image().prefill_mask(attn, img).tolist() == img.tolist()
    assert P.text().prefill_mask(attn, img).tolist() == [
        [False, False, False, False, True],
        [True, False, False, True, True],
    ]
    assert not P.generated().prefill_mask(attn, img).any()
    u = P.last_prompt() | "generated"
    assert u.decode_step() and u.needs_generation and u.prefill_mask(attn, img).sum() == 2


def test_image_selector_on_text_only_raises():
    attn = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(PositionError, match="no image token"):
        P.image().prefill_mask(attn, torch.zeros(1, 4, dtype=torch.bool))


def test_shorthands_and_errors():
    assert isinstance(P.as_selector("generated"), P.Generated)
    assert isinstance(P.as_selector("last-prompt"), P.LastPrompt)
    with pytest.raises(PositionError, match="unknown position selector"):
        P.as_selector("everything")
    with pytest.raises(PositionError):
        P.generated(reduce="max")
    with pytest.raises(PositionError):
        P.token_of_interest("dog") | "all"


@pytest.mark.parametrize("family", sorted(ALL))
def test_toi_word_class_first_of_any(family):
    tok = ALL[family]()
    ids = _answer(tok, "a circle , a red circle and a blue square")
    k = P.find_word_token(tok, ids, P.token_of_interest(["blue", "red", "green"]))
    assert k is not None and tok.decode(ids[k:]).strip().startswith("red")
    assert P.find_word_token(tok, ids, P.token_of_interest(["green", "yellow"])) is None
    with pytest.raises(TokenOfInterestError):
        P.token_of_interest([])
