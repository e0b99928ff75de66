"""Word -> token positions, asserted exactly, for every tokenizer kind attnkit meets."""

import pytest

from attnkit import AttnKitError, WordNotFoundError
from attnkit.models import clip_tokenizer, tiny_t5_tokenizer
from attnkit.core.tokens import TokenMap, prompt_tokens


@pytest.fixture(scope="module")
def clip():
    return clip_tokenizer()


def test_clip_tokenizer_is_the_real_bpe(clip):
    assert clip("a red car and a blue bird").input_ids == [49406, 320, 736, 1615, 537, 320, 1746, 3329, 49407]
    assert len(clip) == 49408 and clip.model_max_length == 77


def test_single_words_skip_bos(clip):
    tm = TokenMap("a red car and a blue bird", clip)
    assert tm.find("car").positions == (3,)
    assert tm.find("bird").positions == (7,)
    assert tm.word_list() == ["a", "red", "car", "and", "a", "blue", "bird"]


def test_multi_piece_word(clip):
    tm = TokenMap("a porcupine on a rock", clip)
    assert tm.tokens[2:5] == ["por", "cup", "ine</w>"]
    assert tm.find("porcupine").positions == (2, 3, 4)
    assert tm.find("rock").positions == (7,)


def test_phrase_covers_consecutive_words(clip):
    tm = TokenMap("a red car and a blue bird", clip)
    assert tm.find("red car").positions == (2, 3)
    assert tm.find("a blue bird").positions == (5, 6, 7)
    with pytest.raises(WordNotFoundError):
        tm.find("red bird")  # both words exist, but not next to each other


def test_repeated_word_occurrences(clip):
    tm = TokenMap("a dog and a dog", clip)
    span = tm.find("dog")
    assert span.positions == (2, 5) and span.occurrences == ((2,), (5,))
    assert tm.find("dog#1").positions == (2,)
    assert tm.find("dog#2").positions == (5,)
    with pytest.raises(WordNotFoundError, match=r"asks for occurrence 3 but 'dog' occurs 2 time"):
        tm.find("dog#3")
    with pytest.raises(AttnKitError, match="occurrences count from 1"):
        tm.find("dog#0")


def test_case_and_punctuation(clip):
    tm = TokenMap("A RED Car, and a bird!", clip)
    assert tm.tokens[3:5] == ["car</w>", ",</w>"]
    assert tm.find("car").positions == (3,)  # the comma token is not part of the word
    assert tm.find("Car").positions == (3,)
    assert tm.find("car,").positions == (3,)  # punctuation in the query is ignored
    assert tm.find("bird").positions == (7,)
    assert tm.find("car, and").positions == (3, 4, 5)  # inner punctuation is covered by a phrase


def test_hyphenated_word(clip):
    tm = TokenMap("a man in a t-shirt", clip)
    assert tm.tokens[5:8] == ["t</w>", "-</w>", "shirt</w>"]
    assert tm.find("t-shirt").positions == (5, 6, 7)
    assert tm.find("shirt").positions == (7,)


def test_missing_word_names_it_and_lists_the_prompt(clip):
    tm = TokenMap("a red car", clip)
    with pytest.raises(WordNotFoundError) as err:
        tm.find("cat")
    assert str(err.value) == "'cat' is not in the prompt 'a red car'; its words are: a, red, car. Did you mean 'car'?"
    assert isinstance(err.value, ValueError)


def test_word_part_is_not_a_word(clip):
    tm = TokenMap("a carpet", clip)
    with pytest.raises(WordNotFoundError):
        tm.find("car")


def test_long_prompt_refuses_words_the_pipeline_truncates(clip):
    prompt = " ".join(["red"] * 80) + " car"
    tm = TokenMap(prompt, clip)
    assert tm.length == 83 and tm.last_kept == 75
    assert tm.find("red#75").positions == (75,)
    with pytest.raises(AttnKitError, match=r"'car' is at token 81 of tokenizer, but the pipeline keeps only the first 75"):
        tm.find("car")
    with pytest.raises(AttnKitError, match=r"keeps only the first 75"):
        tm.find("red")  # all occurrences requested, some are cut off


def test_bad_queries(clip):
    tm = TokenMap("a red car", clip)
    for bad in ("", "   ", "!!", None):
        with pytest.raises(AttnKitError):
            tm.find(bad)


def test_sdxl_both_tokenizers_agree(sdxl):
    tokens = prompt_tokens(sdxl, "a porcupine and a red car", "sdxl")
    assert set(tokens.maps) == {"tokenizer", "tokenizer_2"}
    assert tokens.find("porcupine").positions == (2, 3, 4)
    assert tokens.maps["tokenizer_2"].find("red car").positions == (7, 8)
    # the second encoder pads with "!" (id 0) but positions are the same
    assert sdxl.tokenizer_2.pad_token == "!"


def test_t5_positions_for_flux(flux):
    tokens = prompt_tokens(flux, "a porcupine and a red car", "flux", max_sequence_length=32)
    assert tokens.key == "tokenizer_2" and tokens.num_keys == 32
    t5 = tokens.attention
    assert t5.tokens[:4] == ["▁a", "▁por", "cup", "ine"]
    assert tokens.find("porcupine").positions == (1, 2, 3)  # T5 has no BOS
    assert tokens.find("red car").positions == (6, 7)  # a por cup ine and a red car
    assert t5.last_kept == 30  # 32 positions, the last one is </s>
    long = prompt_tokens(flux, " ".join(["red"] * 40) + " car", "flux", max_sequence_length=32)
    with pytest.raises(AttnKitError, match="tokenizer_2 \\(T5\\).*keeps only the first 30"):
        long.find("car")


def test_tiny_t5_tokenizer_is_deterministic():
    a, b = tiny_t5_tokenizer(), tiny_t5_tokenizer()
    assert a("a red car").input_ids == b("a red car").input_ids
    assert a("a red car").input_ids[-1] == a.eos_token_id
