"""``bt bench --generate N``: end-to-end ``generate()`` of a seq2seq model, encoder converted vs not.

bt converts only the encoder's layers; the decoder, its cache and cross-attention stay transformers'
own. So the gain on ``generate()`` is bounded by the encoder's share of it, which the result reports
next to the times (the encoder's forward time from the main table over the unconverted generate time)
instead of letting the encoder's speed-up stand for the whole model's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from ._bench_measure import time_rounds

__all__ = ["time_generate"]


def time_generate(
    original: Any,
    converted: Any,
    inputs: dict[str, Any],
    new_tokens: int,
    *,
    strategy: str | None,
    measure: Callable[[Callable[[], Any]], float],
    runs: int,
    warmup: int,
    say: Callable[[str], None],
    label: str,
) -> dict[str, Any]:
    """Median seconds of greedy ``generate()`` producing exactly ``new_tokens`` tokens per row, the
    converted and the unconverted model alternating on the same batch, and whether every run of the
    two gave the same tokens."""
    import torch

    from ._engine import force_strategy

    # min = max: neither run stops early at an end-of-sequence token, so both do the same work.
    settings: dict[str, Any] = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "num_beams": 1,
    }
    generation = original.generation_config
    if generation.decoder_start_token_id is None and generation.bos_token_id is None:
        # A config built from defaults (T5's) may name no start token: T5 starts from its pad token.
        start = original.config.pad_token_id
        if start is None:
            raise ValueError(
                f"{type(original).__name__} names no decoder_start_token_id, bos_token_id nor pad_token_id: "
                "set decoder_start_token_id in its config to time generate()"
            )
        settings["decoder_start_token_id"] = start
    outputs: dict[str, list[Any]] = {"bt": [], "sdpa": []}

    def bt_call() -> None:
        with force_strategy(strategy):
            outputs["bt"].append(converted.generate(**inputs, **settings))

    def sdpa_call() -> None:
        outputs["sdpa"].append(original.generate(**inputs, **settings))

    times = time_rounds({"bt": bt_call, "sdpa": sdpa_call}, measure, runs, warmup, say, label)
    identical = all(
        torch.equal(_tokens(mine), _tokens(theirs)) for mine, theirs in zip(outputs["bt"], outputs["sdpa"], strict=True)
    )
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "new_tokens": new_tokens,
        "model_class": type(original).__name__,
        "bt_s": median["bt"],
        "sdpa_s": median["sdpa"],
        "speedup_vs_sdpa": median["sdpa"] / median["bt"],
        "tokens_identical": identical,
        "output_length": int(_tokens(outputs["sdpa"][-1]).shape[-1]),
        "samples": times,
    }


def _tokens(output: Any) -> Any:
    """The token ids of a ``generate()`` result (a tensor, or an output object with ``sequences``)."""
    return getattr(output, "sequences", output)
