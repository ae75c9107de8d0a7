"""Tokenizers with the four lookup tokens as single tokens.

Train a byte-level BPE with HF `tokenizers` (`train_tokenizer`), or add the tokens to any local
transformers tokenizer directory (`add_lookup_tokens`). Both give a tokenizer that
`AutoTokenizer.from_pretrained(dir)` loads. The lookup tokens are added tokens that never merge with
their neighbours, so the space that follows `<|db_entity|>`, `<|db_relationship|>` and
`<|db_return|>` in a block belongs to the next word (`Ġ` prefix), exactly as in ordinary prose, and
decode(encode(block)) gives the block back byte for byte.

`lookup_token_ids(tokenizer)` is the one place that computes the lookup-token, EOS and pad ids
(a `LookupTokenIds`) for packing, the loss mask, perplexity and generation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from lmlm.format import SPECIAL_TOKENS

EOS_TOKEN = "<|endoftext|>"


def _wrap(tok, **named):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False,
                                   extra_special_tokens=list(SPECIAL_TOKENS), **named)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None,
                    min_frequency: int = 2, pad_token: str | None = None):
    """Train a byte-level BPE on `texts`; EOS = BOS = `<|endoftext|>` (id 0), pad = EOS unless
    `pad_token` names a token of its own (then id 1), lookup tokens next (1-4, or 2-5).

    Saved with `save_pretrained(out_dir)` when out_dir is given. Returns the PreTrainedTokenizerFast.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    fixed = [EOS_TOKEN, *([pad_token] if pad_token else []), *SPECIAL_TOKENS]
    n_fixed = len(fixed) + 256
    if vocab_size < n_fixed:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {n_fixed} "
                         f"(256 bytes + {len(fixed)} special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=fixed, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    wrapped = _wrap(tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=pad_token or EOS_TOKEN)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        wrapped.save_pretrained(str(out_dir))
    check_lookup_tokens(wrapped, str(out_dir or "trained tokenizer"))
    return wrapped


def add_lookup_tokens(tokenizer, out_dir: str | Path | None = None):
    """Add the four lookup tokens to a tokenizer (object or local directory) as single special tokens.

    Existing ids do not change; new ids come after the vocabulary, so resize the model's embeddings
    to `len(tokenizer)`. A tokenizer without a pad token gets pad = eos. Saved to out_dir if given.
    """
    from tokenizers import AddedToken

    if isinstance(tokenizer, (str, Path)):
        tokenizer = _auto(tokenizer)
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
                              for t in missing], special_tokens=True)
    extra = [str(t) for t in getattr(tokenizer, "extra_special_tokens", []) or []]
    tokenizer.add_special_tokens({"extra_special_tokens": extra + [t for t in SPECIAL_TOKENS if t not in extra]})
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    check_lookup_tokens(tokenizer, str(out_dir or "tokenizer"))
    return tokenizer


def _auto(path: str | Path):
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"{path}: not a tokenizer directory (no tokenizer.json / tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_tokenizer(path: str | Path):
    """Load a tokenizer directory and check that it has the four lookup tokens as single tokens."""
    tok = _auto(path)
    check_lookup_tokens(tok, str(path))
    return tok


@dataclass(frozen=True)
class LookupTokenIds:
    """The ids a tokenizer gives the four lookup tokens, plus its EOS and padding ids.

    `eos` is None for a tokenizer without an EOS token; `pad` is the pad token, else EOS, else 0.
    """

    entity: int        # <|db_entity|>
    relationship: int  # <|db_relationship|>
    return_: int       # <|db_return|>
    end: int           # <|db_end|>
    eos: int | None
    pad: int

    @property
    def markers(self) -> tuple[int, int, int, int]:
        """The four lookup-token ids in SPECIAL_TOKENS order."""
        return self.entity, self.relationship, self.return_, self.end

    def by_token(self) -> dict[str, int]:
        """{lookup token: id}, in SPECIAL_TOKENS order."""
        return dict(zip(SPECIAL_TOKENS, self.markers))


def lookup_token_ids(tokenizer, require_eos: bool = False) -> LookupTokenIds:
    """The lookup-token, EOS and padding ids of `tokenizer`: the one place that computes them.

    Raises ValueError unless each lookup token encodes to exactly one id (a tokenizer without them
    needs `add_lookup_tokens`), or, with `require_eos`, when the tokenizer has no EOS token.
    """
    ids = []
    for t in SPECIAL_TOKENS:
        got = tokenizer.encode(t, add_special_tokens=False)
        if len(got) != 1:
            raise ValueError(f"tokenizer: lookup token {t} encodes to {got}, not one id; "
                             "call lmlm.tokenizer.add_lookup_tokens")
        ids.append(int(got[0]))
    eos = tokenizer.eos_token_id
    if eos is None and require_eos:
        raise ValueError("tokenizer: it has no EOS token; documents are packed with EOS separators")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return LookupTokenIds(*ids, eos=None if eos is None else int(eos), pad=int(pad or 0))


def check_lookup_tokens(tokenizer, name: str) -> None:
    """Raise ValueError unless each lookup token encodes to exactly its own single id."""
    try:
        lookup_token_ids(tokenizer)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
