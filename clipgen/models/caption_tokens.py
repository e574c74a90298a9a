"""Caption tokens for the caption-conditioned prior: the UTF-8 bytes of the caption (ByT5's
tokenizer from `transformers`), so that no vocabulary file has to be trained, shipped or
downloaded. Id 0 pads, 1 ends a caption; an empty caption is the end token alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import ByT5Tokenizer

TOKENIZER_NAME = "byt5-utf8"


class CaptionTokenizer:
    """Captions to fixed-length (B, length) id rows, padded with `pad_id`; longer captions are
    cut to `length - 1` bytes before the end token."""

    def __init__(self, length: int) -> None:
        if length < 2:
            raise ValueError(f"caption length must be at least 2 tokens, got {length}")
        self.length = length
        self._tokenizer = ByT5Tokenizer(extra_ids=0)
        self.pad_id = int(self._tokenizer.pad_token_id)
        self.vocab_size = len(self._tokenizer)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, length) int64 ids of the captions."""
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not one string")
        out = self._tokenizer(list(captions), padding="max_length", truncation=True,
                              max_length=self.length, return_tensors="pt")
        return out.input_ids

    def too_long(self, captions: Sequence[str]) -> int:
        """How many of the captions `encode` cuts short (more than `length - 1` bytes)."""
        return sum(len(c.encode("utf-8")) > self.length - 1 for c in captions)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """The captions of (B, length) id rows (padding and end tokens dropped)."""
        return self._tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True where a row holds a caption token or its end token (not padding)."""
        return ids != self.pad_id

    def record(self) -> dict[str, object]:
        """What a cache or a prior records of the tokenizer."""
        return {"tokenizer": TOKENIZER_NAME, "length": self.length}
