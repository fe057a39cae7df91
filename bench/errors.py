"""The one exception type the CLI turns into a single clear line and a non-zero exit."""

from __future__ import annotations


class BenchError(Exception):
    """A problem with the user's input or environment, phrased for the user.

    The message says what is wrong, where, and what was expected; the CLI prints it as one
    line (``error: ...``) without a traceback, because a traceback is noise for input mistakes.
    """


def first_offending(mask) -> str:
    """Describe the offending entries of a boolean tensor/array: their count and first index."""
    import torch

    flat = torch.as_tensor(mask).reshape(-1)
    bad = torch.nonzero(flat).reshape(-1)
    count = int(bad.numel())
    if count == 0:
        return "0 entries"
    return f"{count} entr{'y' if count == 1 else 'ies'}, first at flat index {int(bad[0])}"
