"""Batching for torch scorers (a run folder's classifier, a TorchScript file): images decoded in DataLoader worker
processes and stacked into tensors. The ONNX path never imports this module (:mod:`lmpt.predictor` is torch-free).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from .errors import DataError


class _Decoded(torch.utils.data.Dataset):
    """``(index, input or None, error or None)``: an input that does not decode is reported, not raised."""

    def __init__(self, items: Sequence[Any], decode: Callable[[Any], Any]) -> None:
        self.items, self.decode = list(items), decode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any, Optional[str]]:
        try:
            return i, self.decode(self.items[i]), None
        except DataError as exc:
            return i, None, str(exc).split(". ")[0]


def _collate(batch: list) -> list:
    return batch


class TorchBatching:
    """Mixin for :class:`lmpt.predictor.Predicting` scorers that take tensors: DataLoader decoding, ``torch.stack``."""

    @staticmethod
    def batches(items: Sequence[Any], decode: Callable[[Any], Any], batch_size: int,
                num_workers: int = 0) -> Iterator[list[tuple[int, Any, Optional[str]]]]:
        yield from torch.utils.data.DataLoader(_Decoded(items, decode), batch_size=batch_size,
                                               num_workers=num_workers, collate_fn=_collate)

    @staticmethod
    def stack(items: Sequence[Any]) -> torch.Tensor:
        return torch.stack([x if isinstance(x, torch.Tensor) else torch.as_tensor(x) for x in items])


__all__ = ["TorchBatching"]
