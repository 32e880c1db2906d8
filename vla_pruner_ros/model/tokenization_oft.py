"""A small Llama-2-style tokenizer, built offline for the checkpoints our presets write.

Real checkpoints ship Llama-2's tokenizer files; our reduced checkpoints need a tokenizer of the
same kind that transformers loads from the directory the same way (``AutoTokenizer`` ->
``LlamaTokenizer``). It is a byte-fallback BPE over "▁"-marked words, trained deterministically on
a built-in corpus of robot instructions (pieces never span words, punctuation or digits), with
Llama-2's id layout:

    0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, learned pieces, unused fillers,
    single characters from 29871 ("▁" = 29871), 32000 <PAD>

``<PAD>`` is the last real id (as OpenVLA appends it to Llama-2's 32000 pieces); the embedding
table is padded further to a multiple of 64 (32064) by the checkpoint writer.
"""

from __future__ import annotations

import json
import os

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<PAD>"
BYTE_PIECES = [f"<0x{value:02X}>" for value in range(256)]
WORD_START = "▁"

# Verbs/objects/places for robot instructions; crossed into sentences below so the BPE learns
# pieces for the words the prompt and typical instructions use.
_VERBS = ["pick up", "put", "place", "push", "pull", "open", "close", "move", "lift", "stack",
          "turn on", "turn off", "grasp", "release", "slide", "rotate", "reach", "insert", "wipe", "pour"]
_OBJECTS = ["the red block", "the blue cube", "the green bowl", "the black mug", "the white plate",
            "the yellow sponge", "the top drawer", "the cabinet door", "the alphabet soup",
            "the tomato sauce", "the cream cheese", "the wine bottle", "the stove", "the basket",
            "the bowl", "the plate", "the cup", "the box", "the tray", "the lid"]
_PLACES = ["on the plate", "in the basket", "into the drawer", "on top of the cabinet",
           "to the left", "to the right", "onto the tray", "next to the bowl", "in the box",
           "on the table", "behind the mug", "in front of the robot"]
_PROMPT = "In: What action should the robot take to {}?\nOut:"


def training_corpus() -> list[str]:
    sentences = []
    for i, verb in enumerate(_VERBS):
        for j, obj in enumerate(_OBJECTS):
            place = _PLACES[(i + j) % len(_PLACES)]
            sentences.append(_PROMPT.format(f"{verb} {obj} {place}"))
            sentences.append(f"{verb} {obj}")
    return sentences


LLAMA2_NUM_PIECES = 32000
LLAMA2_CHAR_START = 29871  # Llama-2's single-character pieces start here, "▁" first


def build_tokenizer(num_pieces: int = LLAMA2_NUM_PIECES, char_start: int | None = None) -> Tokenizer:
    """A Llama-2-style byte-fallback BPE with ``num_pieces`` ids before ``<PAD>`` (which gets id
    ``num_pieces``).

    Id layout: <unk> <s> </s>, the 256 byte pieces, the learned multi-character pieces, unused
    filler pieces, and from ``char_start`` on the single characters with "▁" first. With the
    defaults (32000 pieces, characters from 29871) "▁" has Llama-2's id 29871 and <PAD> 32000, so
    code that hard-codes them (upstream OFT appends 29871) runs on our checkpoints too.
    ``char_start=None`` puts the characters right after the learned pieces (no fillers).
    """
    num_specials = 3 + len(BYTE_PIECES)
    if char_start is None and num_pieces == LLAMA2_NUM_PIECES:
        char_start = LLAMA2_CHAR_START
    # 1) Learn merges over "▁"-prefixed words; pieces never span words, punctuation or digits.
    learner = Tokenizer(models.BPE(unk_token=UNK))
    learner.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    room = (char_start if char_start is not None else num_pieces) - num_specials
    trainer = trainers.BpeTrainer(vocab_size=3 + min(room, 2048), special_tokens=[UNK, BOS, EOS],
                                  show_progress=False, min_frequency=1)
    learner.train_from_iterator(training_corpus(), trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    pieces = sorted((p for p in learned["vocab"] if p not in (UNK, BOS, EOS)), key=learned["vocab"].__getitem__)
    chars = [WORD_START] + [p for p in pieces if len(p) == 1 and p != WORD_START]
    merged = [p for p in pieces if len(p) > 1]
    # 2) Lay the ids out like Llama-2 and assemble its pipeline.
    first_char = char_start if char_start is not None else num_specials + len(merged)
    if num_specials + len(merged) > first_char or first_char + len(chars) > num_pieces:
        raise ValueError(f"num_pieces={num_pieces}, char_start={char_start}: no room for {len(merged)} learned "
                         f"and {len(chars)} single-character pieces after the {num_specials} fixed ones")
    fillers = iter(f"<unused_{i}>" for i in range(num_pieces))  # never produced by the merges
    ordered = [UNK, BOS, EOS] + BYTE_PIECES + merged
    ordered += [next(fillers) for _ in range(first_char - len(ordered))] + chars
    ordered += [next(fillers) for _ in range(num_pieces - len(ordered))]
    vocab = {piece: index for index, piece in enumerate(ordered)}
    if len(vocab) != num_pieces:
        raise RuntimeError(f"tokenizer layout has {len(vocab)} distinct pieces, expected {num_pieces}")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    # What transformers' LlamaTokenizer (legacy=False) uses: spaces -> "▁", one "▁" prepended.
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace(WORD_START, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, BOS, EOS)])
    tokenizer.add_special_tokens([AddedToken(PAD, special=True, normalized=False)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])])
    return tokenizer


def save_tokenizer_files(tokenizer: Tokenizer, directory: str | os.PathLike, model_max_length: int = 2048) -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json."""
    pad_id = tokenizer.token_to_id(PAD)
    # Merges as "a b" strings (the Llama-2 files' form): tokenizers < 0.20 -- e.g. the 0.19 that
    # OFT's transformers fork pins -- cannot read the newer [a, b] pair form; newer ones read both.
    data = json.loads(tokenizer.to_str())
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for token in (UNK, BOS, EOS, PAD)
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "legacy": False,
        "model_max_length": model_max_length,
        "pad_token": PAD,
        "padding_side": "right",
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": UNK,
        "use_default_system_prompt": False,
    }
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special),
                          ("added_tokens.json", {PAD: pad_id})):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2, ensure_ascii=False)
            f.write("\n")
