"""The one shift function: within a document only, never from the previous document."""

import pytest
import torch

from megadfm.data.batch import batch_from_documents, segments_to_cu_seqlens
from megadfm.dfm.shift import prediction_indices, predictable_positions, segment_starts


def test_segment_starts_of_a_packed_batch():
    cu = segments_to_cu_seqlens([[3, 2], [4, 1]], 5)
    starts = segment_starts(cu, 2, 5)
    assert starts.tolist() == [[True, False, False, True, False], [True, False, False, False, True]]


def test_prediction_indices_with_and_without_shift():
    cu = segments_to_cu_seqlens([[3, 2]], 5)
    starts = segment_starts(cu, 1, 5)
    targets = torch.tensor([[False, True, True, False, True]])
    src, tgt = prediction_indices(targets, starts, shift=True)
    assert tgt.tolist() == [1, 2, 4] and src.tolist() == [0, 1, 3]
    src, tgt = prediction_indices(targets, starts, shift=False)
    assert src.tolist() == tgt.tolist() == [1, 2, 4]


def test_first_token_of_a_document_cannot_be_predicted_with_shift():
    cu = segments_to_cu_seqlens([[3, 2]], 5)
    starts = segment_starts(cu, 1, 5)
    assert predictable_positions(starts, True).tolist() == [[False, True, True, False, True]]
    assert predictable_positions(starts, False).all()
    # position 3 starts the second document: its predictor would be document 1's last output
    with pytest.raises(ValueError, match="first token"):
        prediction_indices(torch.tensor([[False, False, False, True, False]]), starts, shift=True)
    prediction_indices(torch.tensor([[False, False, False, True, False]]), starts, shift=False)


def test_bad_cu_seqlens_is_rejected():
    batch = batch_from_documents([[1, 2, 3]], seq_len=4, pad_token_id=0)
    with pytest.raises(ValueError, match="B\\*L"):
        segment_starts(batch["cu_seqlens"][:-1], 1, 4)
