"""The shift convention, in one place (docs/DESIGN.md §3 "Shift").

With ``shift_logits`` on (default, as CoDA and Dream), the model output at position i predicts the
token at position i + 1: a Qwen3 checkpoint's LM head was trained to do exactly that, so the
adapted model starts from a head that already means something. With it off, the output at
position i predicts the token at position i.

The shift never crosses a segment boundary of ``cu_seqlens``: the output at the last position of a
document does not predict the first token of the next document packed after it, and (the other
side of the same rule) **the first token of every segment cannot be predicted at all** when the
shift is on. The DFM corruption therefore never masks it (:func:`predictable_positions` feeds the
path's "maskable" set), the loss never scores it, and the sampler refuses a generation that would
have to produce it (a prompt of at least one token is needed, e.g. ``<|endoftext|>`` as BOS).

Training (:mod:`megadfm.dfm.loss`), evaluation and sampling (:mod:`megadfm.dfm.sampling.steps`) all map
"which tokens do I want predicted" to "which hidden states predict them" through
:func:`prediction_indices`, so they cannot disagree.
"""

from __future__ import annotations

from typing import Tuple

import torch


def segment_starts(cu_seqlens: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """Bool [B, L]: True at the first position of every segment of the flattened ``cu_seqlens``.

    ``cu_seqlens`` is the batch contract's (megadfm/data/batch.py): boundaries over the B*L
    flattened tokens, with every sample start b*L among them.
    """
    total = batch_size * seq_len
    cu = cu_seqlens.to(torch.long)
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens must start at 0 and end at B*L={total}, got {cu.tolist()[:4]}...{cu.tolist()[-2:]}")
    starts = torch.zeros(total, dtype=torch.bool, device=cu_seqlens.device)
    starts[cu[:-1]] = True
    starts = starts.view(batch_size, seq_len)
    if not bool(starts[:, 0].all()):
        raise ValueError("cu_seqlens must have a boundary at every sample start b*L (batch contract)")
    return starts


def predictable_positions(segment_start: torch.Tensor, shift: bool) -> torch.Tensor:
    """Bool [B, L]: positions whose token the model can be asked to predict.

    Without shift every position predicts itself. With shift the token at i is predicted by the
    output at i - 1, which must lie in the same segment: segment starts are not predictable.
    """
    if shift:
        return ~segment_start
    return torch.ones_like(segment_start)


def prediction_indices(targets: torch.Tensor, segment_start: torch.Tensor, shift: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``(source, target)``: the hidden state at ``source`` predicts the token at ``target``.

    ``targets`` is a bool [B, L] of positions to predict (masked positions in training, positions
    being decoded in sampling). Indices are into the flattened B*L tokens, in row-major order.
    Raises ValueError if a target cannot be predicted under this convention (a segment start with
    shift on), rather than silently reading the previous document's last output.
    """
    if targets.shape != segment_start.shape:
        raise ValueError(f"targets {tuple(targets.shape)} and segment_start {tuple(segment_start.shape)} differ in shape")
    if shift and bool((targets & segment_start).any()):
        raise ValueError("with shift_logits on, the first token of a segment cannot be predicted (no output precedes it "
                         "in its document); it must never be masked or decoded")
    target = targets.reshape(-1).nonzero(as_tuple=True)[0]
    source = target - 1 if shift else target
    return source, target


def gather_predictions(hidden: torch.Tensor, targets: torch.Tensor, segment_start: torch.Tensor,
                       shift: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [N, H] that predict the ``targets`` [B, L] positions, and their flat target indices [N]."""
    source, target = prediction_indices(targets, segment_start, shift)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, source), target
