"""Character-level data in nanoGPT's format, and a generated corpus to train on out of the box.

nanoGPT's prepared folder holds train.bin and val.bin (uint16 token ids) and meta.pkl ({"vocab_size",
"itos", "stoi"}). `load_data` reads such a folder, or a text file (encoded by its characters, 90% train),
or, given nothing, the corpus `generate_corpus` makes: a play of invented speakers whose lines follow a
small grammar over invented words, so a model learns its words, agreement and layout step by step.
"""
from __future__ import annotations

import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """Data that cannot be used: a missing path, no text in it, a folder without train.bin/val.bin."""


@dataclass
class CharData:
    train: np.ndarray          # uint16 token ids
    val: np.ndarray
    vocab_size: int
    itos: dict[int, str] | None  # None for a prepared folder without meta.pkl
    source: str                # where it came from, for people

    def decode(self, ids) -> str:
        if self.itos is None:
            return " ".join(str(int(i)) for i in ids)
        return "".join(self.itos.get(int(i), "?") for i in ids)

    def encode(self, text: str) -> list[int]:
        if self.itos is None:
            raise DataError("this data has no meta.pkl, so text cannot be encoded")
        stoi = {ch: i for i, ch in self.itos.items()}
        unknown = sorted(set(text) - set(stoi))
        if unknown:
            raise DataError(f"characters outside the data's vocabulary: {''.join(unknown)!r}")
        return [stoi[ch] for ch in text]


# ----------------------------------------------------------------------------- the generated corpus

_SYLLABLES = ("ka", "ro", "mi", "len", "tor", "va", "shi", "un", "del", "bra", "es", "ol", "ith", "mar", "qua",
              "fen", "dor", "li", "sa", "gre", "wy", "th", "an", "bel", "cor", "ny", "pe", "ush", "zo", "har")
_PLACES = ("by the gate", "in the hall", "upon the hill", "under the moon", "at the shore", "within the wood",
           "before the king", "across the river", "beneath the tower", "beyond the sea")
_REPLIES = ("Aye, my lord.", "Not so.", "I swear it.", "What news?", "Then go!", "Peace, I pray you.",
            "Speak on.", "It shall be done.", "Alas!", "Who goes there?")


def _lexicon(rng: random.Random, count: int, syllables: tuple[int, int]) -> list[str]:
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(*syllables))))
    return sorted(words)


def _zipf(rng: random.Random, words: list[str]) -> str:
    # frequent words and rare ones, as in real text: the loss falls steadily as rarer words are learned
    return rng.choices(words, weights=[1.0 / (rank + 1) for rank in range(len(words))])[0]


def _sentence(rng: random.Random, nouns, verbs, adjectives) -> str:
    plural = rng.random() < 0.4
    noun = _zipf(rng, nouns) + ("s" if plural else "")
    verb = _zipf(rng, verbs) + ("" if plural else "s")  # agreement: the learnable part that spans words
    article = "the" if plural or rng.random() < 0.5 else "a"
    words = [article, _zipf(rng, adjectives), noun, verb, rng.choice(_PLACES)]
    if rng.random() < 0.3:
        words += ["and", _zipf(rng, verbs) + ("" if plural else "s"), "the", _zipf(rng, nouns)]
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice((".", ".", "!", ";", ","))


def generate_corpus(n_chars: int = 400_000, seed: int = 1337) -> str:
    """A deterministic play in an invented tongue: speakers in capitals, each with a few lines that follow a
    small grammar (articles, agreement, places) over a lexicon of invented words drawn Zipf-like, or a reply."""
    rng = random.Random(seed)
    nouns = _lexicon(rng, 150, (1, 3))
    verbs = _lexicon(rng, 80, (1, 2))
    adjectives = _lexicon(rng, 80, (2, 3))
    speakers = [name.upper() for name in _lexicon(rng, 12, (2, 3))]
    parts: list[str] = []
    total = 0
    while total < n_chars:
        lines = [_sentence(rng, nouns, verbs, adjectives) if rng.random() < 0.8 else rng.choice(_REPLIES)
                 for _ in range(rng.randint(1, 4))]
        speech = f"{rng.choice(speakers)}:\n" + "\n".join(lines) + "\n\n"
        parts.append(speech)
        total += len(speech)
    return "".join(parts)[:n_chars]


# ----------------------------------------------------------------------------- reading and writing

def encode_text(text: str, source: str) -> CharData:
    """Characters as tokens (sorted, as nanoGPT's shakespeare_char does), split 90/10 into train and val."""
    if not text.strip():
        raise DataError(f"{source} holds no text")
    chars = sorted(set(text))
    if len(chars) > 65535:
        raise DataError(f"{source} has {len(chars)} distinct characters; uint16 ids hold at most 65535")
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
    split = int(len(ids) * 0.9)
    return CharData(ids[:split], ids[split:], len(chars), dict(enumerate(chars)), source)


def write_prepared(data: CharData, folder: Path) -> Path:
    """train.bin, val.bin and meta.pkl in nanoGPT's format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data.train.astype(np.uint16).tofile(folder / "train.bin")
    data.val.astype(np.uint16).tofile(folder / "val.bin")
    if data.itos is not None:
        meta = {"vocab_size": data.vocab_size, "itos": data.itos, "stoi": {c: i for i, c in data.itos.items()}}
        with open(folder / "meta.pkl", "wb") as f:
            pickle.dump(meta, f)
    return folder


def _read_prepared(folder: Path) -> CharData:
    missing = [name for name in ("train.bin", "val.bin") if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} is not a prepared folder: it has no {' or '.join(missing)}")
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    if train.size < 2 or val.size < 2:
        raise DataError(f"{folder}: train.bin and val.bin need at least 2 tokens each")
    itos, vocab = None, int(max(train.max(), val.max())) + 1
    if (folder / "meta.pkl").is_file():
        # nanoGPT's own format is a pickle; it is the user's own folder, read as nanoGPT would read it
        with open(folder / "meta.pkl", "rb") as f:
            meta = pickle.load(f)
        if not isinstance(meta, dict) or "vocab_size" not in meta:
            raise DataError(f"{folder / 'meta.pkl'} has no vocab_size")
        vocab = int(meta["vocab_size"])
        itos = {int(k): str(v) for k, v in meta.get("itos", {}).items()} or None
    return CharData(train, val, vocab, itos, str(folder))


def load_data(path: str | Path | None = None) -> CharData:
    """A prepared folder, a text file, or (no path) the generated corpus."""
    if path is None:
        return encode_text(generate_corpus(), "the generated corpus")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_dir():
        return _read_prepared(path)
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise DataError(f"{path} is not a text file (it holds null bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    return encode_text(text, str(path))


def get_batch(ids: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of block_size tokens (x) and the same windows shifted by one (y), int64."""
    if len(ids) <= block_size:
        raise DataError(f"{len(ids)} tokens cannot fill a window of {block_size} + 1")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.from_numpy(np.stack([ids[i:i + block_size].astype(np.int64) for i in starts]))
    y = torch.from_numpy(np.stack([ids[i + 1:i + 1 + block_size].astype(np.int64) for i in starts]))
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
