"""Every mask form transformers hands an encoder layer reads as the same padding."""

from __future__ import annotations

import pytest
import torch

from bt_core._masks import is_right_padded, read_mask
from bt_core.errors import BetterTransformerError

KEEP = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)


def _forms(keep: torch.Tensor) -> dict[str, torch.Tensor]:
    batch, length = keep.shape
    expanded = keep[:, None, None, :].expand(batch, 1, length, length)
    minimum = torch.finfo(torch.float32).min
    return {
        "2-D bool": keep,
        "2-D int": keep.long(),
        "2-D float keep": keep.float(),
        "4-D bool": expanded,
        "4-D bool, one query row": keep[:, None, None, :],
        "additive dtype-min": (~expanded).float() * minimum,
        "additive -10000": (~expanded).float() * -10000.0,
        "int 4-D": expanded.int(),
    }


@pytest.mark.parametrize("form", list(_forms(KEEP)))
def test_every_mask_form_reads_as_the_same_key_padding(form: str) -> None:
    layout = read_mask(_forms(KEEP)[form], batch=2, seq_len=4)
    assert layout.is_key_padding
    assert torch.equal(layout.key_keep, KEEP)


@pytest.mark.parametrize("form", list(_forms(KEEP)))
def test_a_mask_without_padding_reads_as_no_mask(form: str) -> None:
    layout = read_mask(_forms(torch.ones(2, 4, dtype=torch.bool))[form], batch=2, seq_len=4)
    assert layout.key_keep is None and layout.attend is None


def test_no_mask_means_no_padding() -> None:
    layout = read_mask(None, batch=2, seq_len=4)
    assert not layout.has_padding and layout.attend is None


def test_a_causal_mask_is_not_mistaken_for_padding() -> None:
    causal = torch.ones(4, 4, dtype=torch.bool).tril()[None, None].expand(2, 1, 4, 4)
    layout = read_mask(causal, batch=2, seq_len=4)
    assert not layout.is_key_padding
    assert layout.key_keep is None
    assert torch.equal(layout.attend, causal)


def test_padded_query_rows_may_be_fully_masked() -> None:
    # Some models also mask the rows of padded queries; those rows are never read.
    keep4 = KEEP[:, None, None, :] & KEEP[:, None, :, None]
    layout = read_mask(keep4, batch=2, seq_len=4)
    assert layout.is_key_padding and torch.equal(layout.key_keep, KEEP)


def test_a_mask_of_another_length_names_both_shapes() -> None:
    with pytest.raises(BetterTransformerError, match=r"\(2, 5\).*length 4"):
        read_mask(torch.ones(2, 5), batch=2, seq_len=4)


def test_a_mask_of_unknown_rank_is_refused() -> None:
    with pytest.raises(BetterTransformerError, match="not understood"):
        read_mask(torch.ones(2, 1, 1, 1, 4), batch=2, seq_len=4)


def test_right_padding_is_recognised_and_left_padding_is_not() -> None:
    assert is_right_padded(KEEP)
    assert not is_right_padded(KEEP.flip(1))
    assert not is_right_padded(torch.tensor([[True, False, True, False]]))
    assert not is_right_padded(torch.tensor([[False, False, False, False]])), "an empty row cannot be nested"


def test_is_causal_is_folded_into_any_mask() -> None:
    from bt_core._masks import add_causal

    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    assert torch.equal(add_causal(None, 4, torch.device("cpu"))[0, 0], causal)
    combined = add_causal(_forms(KEEP)["additive dtype-min"], 4, torch.device("cpu"))
    assert torch.equal(combined[0, 0], causal & KEEP[0][None, :])
    assert not read_mask(combined, batch=2, seq_len=4).is_key_padding
