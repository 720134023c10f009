"""The per-process batches of the input: bucket widths, the shuffle's block length, the pipeline
(``DatasetSpec.pipeline``). Grain (over a second to import) loads when a pipeline is built, so the
package stays quick to import for the CLI's data commands."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .config import FtagConfig
from .source import FtagH5Source

if TYPE_CHECKING:
    import grain

    from .. import pipeline

log = logging.getLogger(__name__)


def batch_schema(cfg: FtagConfig, aux: bool = True) -> dict[str, tuple[tuple, np.dtype]]:
    """Per-example shapes and dtypes of a batch (without the batch dimension)."""
    t, f = cfg.max_tracks, len(cfg.track_vars) + len(cfg.jet_vars)
    schema = {
        "tracks": ((t, f), np.dtype(np.float32)),
        "valid": ((t,), np.dtype(bool)),
        "flavour": ((), np.dtype(np.int32)),
    }
    if aux:
        schema["track_origin"] = ((t,), np.dtype(np.int32))
        schema["track_vertex"] = ((t,), np.dtype(np.int32))
    return schema


def buckets(source: FtagH5Source, cfg: FtagConfig) -> pipeline.Buckets | None:
    """The track buckets ``cfg.bucket_tracks`` asks for (None when empty), with the source's counts.
    Only the "train" split sorts ``cfg.bucket_window`` batches together: evaluation keeps window 1, so
    its first N batches are the same jets whatever the training's window (only their padding differs)."""
    if not cfg.bucket_tracks:
        return None
    from .. import pipeline

    train = getattr(source, "split", None) == "train"
    return pipeline.Buckets(
        widths=pipeline.bucket_widths(cfg.bucket_tracks, source.max_tracks),
        lengths=source.track_counts(),
        window=cfg.bucket_window if train else 1,
    )


def packed(source: FtagH5Source, cfg: FtagConfig, shuffle: bool | None = None) -> pipeline.Packed | None:
    """The packing ``cfg.pack_tracks`` asks for, with the source's track counts; None when off, for
    every split but "train" and for in-order reads (``shuffle=False``: predictions over a split), so
    that evaluation stays unpacked."""
    if not cfg.pack_tracks or getattr(source, "split", None) != "train" or shuffle is False:
        return None
    from .. import pipeline

    return pipeline.Packed(
        slots=cfg.pack_tracks,
        jets_per_row=cfg.pack_jets,
        lengths=source.track_counts(),
        row_multiple=cfg.pack_row_multiple,
        # the schema's per-track keys (their shape starts with max_tracks), never guessed per batch
        track_keys=tuple(k for k, (shape, _) in batch_schema(cfg).items() if shape[:1] == (cfg.max_tracks,)),
    )


def shuffle_block(source: FtagH5Source, cfg: FtagConfig) -> int:
    """The block length ``cfg.shuffle_block`` asks for (0 = auto, from the files' compression)."""
    if cfg.shuffle_block < 0:
        raise ValueError(f"data.shuffle_block must be >= 0, not {cfg.shuffle_block}")
    if cfg.shuffle_block:
        return int(cfg.shuffle_block)
    block = max([i.chunk_rows for i in getattr(source, "files", [])] + [1])
    if block > 1:
        log.info(
            "ftag_h5: compressed files in chunks of %d jets: shuffling blocks of %d consecutive jets "
            "(data.shuffle_block=1 shuffles single jets, slower)",
            block,
            block,
        )
    return block


def from_config(
    source: FtagH5Source,
    cfg: FtagConfig,
    *,
    seed: int,
    process_index: int,
    process_count: int,
    shuffle: bool | None = None,
) -> grain.IterDataset:
    """The per-process pipeline of a config (``DatasetSpec.pipeline``, called as ``pipeline.from_config``);
    packed batches (``cfg.pack_tracks``) for the training split only, unless ``shuffle`` is False."""
    from .. import pipeline

    options = pipeline.config_options(
        cfg, seed=seed, process_index=process_index, process_count=process_count, shuffle=shuffle
    )
    return pipeline.batched(
        source,
        block=shuffle_block(source, cfg),
        buckets=buckets(source, cfg),
        packed=packed(source, cfg, shuffle),
        **options,
    )
