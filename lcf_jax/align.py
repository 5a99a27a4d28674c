"""Cross-tokenizer alignment for shared-context fusion between models with different tokenizers.

The receiver's tokens are the base: each receiver token's text is re-encoded with the sharer's
tokenizer and one sharer token is chosen for it (`first`: the first piece; `longest`: the piece
with the longest text), so the sharer reads a sequence aligned one to one with the receiver's and
its cache is position-matched. Template tokens (special tokens of the chat template, or any
positions the caller marks) are not fused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

STRATEGIES = ("first", "longest")


def align_tokens(
    receiver_tokenizer: Any,
    sharer_tokenizer: Any,
    receiver_ids: Sequence[int],
    *,
    strategy: str = "first",
    template_mask: Sequence[bool] | None = None,
) -> tuple[list[int], list[bool]]:
    """Sharer token ids aligned one to one with `receiver_ids`, and the mask of positions to fuse.

    A position is not fused when it is a special (template) token of the receiver, when
    `template_mask` marks it, or when its text encodes to no sharer token at all."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown alignment strategy {strategy!r}; choose one of {STRATEGIES}")
    if template_mask is not None and len(template_mask) != len(receiver_ids):
        raise ValueError(f"template_mask has {len(template_mask)} entries for {len(receiver_ids)} tokens")
    special = set(receiver_tokenizer.all_special_ids)
    fallback = sharer_tokenizer.unk_token_id
    if fallback is None:
        fallback = sharer_tokenizer.pad_token_id if sharer_tokenizer.pad_token_id is not None else 0
    sharer_ids, fuse = [], []
    for i, token in enumerate(receiver_ids):
        text = receiver_tokenizer.decode([token])
        encoded = sharer_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) if text else None
        pieces = list(encoded["input_ids"]) if encoded else []
        if strategy == "longest" and pieces:
            # The piece covering the most characters of the text (the first such piece on ties).
            spans = [end - start for start, end in encoded["offset_mapping"]]
            choice = pieces[spans.index(max(spans))]
        else:
            choice = pieces[0] if pieces else fallback
        sharer_ids.append(int(choice))
        is_template = token in special or (template_mask is not None and template_mask[i])
        fuse.append(bool(pieces) and not is_template)
    return sharer_ids, fuse


def align_batch(
    receiver_tokenizer: Any, sharer_tokenizer: Any, prompts: Sequence[Sequence[int]], *, strategy: str = "first"
) -> tuple[list[list[int]], list[list[bool]]]:
    """`align_tokens` for each prompt: (sharer prompts, fuse masks), ready for
    `communicate.answer_shared_context(..., sharer_prompts=, fuse_mask=)`."""
    pairs = [align_tokens(receiver_tokenizer, sharer_tokenizer, p, strategy=strategy) for p in prompts]
    return [p[0] for p in pairs], [p[1] for p in pairs]
