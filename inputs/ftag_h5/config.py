"""The options of the ATLAS flavour-tagging HDF5 input: ``data:`` with ``format: ftag_h5``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..spec import DataConfig

# GN2's track inputs, as in salt's configs/GN2.yaml
GN2_TRACK_VARS = (
    "d0",
    "z0SinTheta",
    "dphi",
    "deta",
    "qOverP",
    "IP3D_signed_d0_significance",
    "IP3D_signed_z0_significance",
    "phiUncertainty",
    "thetaUncertainty",
    "qOverPUncertainty",
    "numberOfPixelHits",
    "numberOfSCTHits",
    "numberOfInnermostPixelLayerHits",
    "numberOfNextToInnermostPixelLayerHits",
    "numberOfInnermostPixelLayerSharedHits",
    "numberOfInnermostPixelLayerSplitHits",
    "numberOfPixelSharedHits",
    "numberOfPixelSplitHits",
    "numberOfSCTSharedHits",
)


@dataclasses.dataclass
class FtagConfig(DataConfig):
    """Options of the ATLAS flavour-tagging HDF5 input (all YAML-mappable).

    jet_vars: jet variables appended to every track (normalised with the ``jets`` group); default: the
        calibrated ``pt_btagJes``, ``eta_btagJes`` that training-dataset-dumper writes and salt's GN2 reads.
    track_vars: per-track inputs (default: GN2's 19).
    max_tracks: track slots per jet in the batch (the file's extra slots are cut, missing ones padded).
    norm_dict: YAML/JSON ``{jets|tracks: {var: {mean, std}}}``; None: compute from the training files
        (``norm_max_jets`` jets) and cache it.
    class_dict: salt/umami-preprocessing class dict ``{jets: {flavour_label: [w_b, w_c, w_u, w_tau]},
        tracks: {ftagTruthOriginLabel: [8 weights]}}``: the class weights of the jet-flavour and (when
        given) track-origin losses (``model_config``); None: unweighted losses unless the model config
        gives ``class_weights``.
    flavour_label: ``"auto"`` or the jets field holding the label (see the module doc).
    aux_labels: ``"auto"`` (track labels when every file has them), ``"on"`` (required), ``"off"``.
    eval_fraction: tail of each training file held out for ``split="eval"`` when ``eval_path`` is None.
    check_finite: raise on NaN/inf in the input variables of the rows read.
    shuffle_block: the training order shuffles blocks of this many consecutive jets (``pipeline.batched``'s
        ``block``): 1 = single jets; 0 = auto: 1 for uncompressed files, the chunk length for
        compressed chunked ones (umami-preprocessing writes LZ4 chunks of 100 jets), where reading single
        scattered jets decompresses a whole chunk each (about 30x slower).
    bucket_tracks: track widths a batch may be padded to (``max_tracks`` is added as the last); empty:
        every batch has ``max_tracks`` slots with the file's masks (holes kept).
    bucket_window: global batches whose jets are sorted by track count together before batching
        (1: the same batches as without buckets, each padded to its longest jet; > 1 cuts much more
        padding but makes batches multiplicity-, hence flavour-correlated, which slowed convergence
        per step in a first test). Evaluation always uses 1.
    pack_tracks: packed training batches (0: off): the jets of a global batch, a uniform random sample as
        unpacked, share rows of this many track slots (at least ``max_tracks``, so any jet fits), each
        jet's valid tracks contiguous, with ``segment`` (the jet slot of each track) and per-jet keys
        ``[rows, pack_jets]`` (see the package doc). Not with ``bucket_tracks``. Evaluation, export and
        serving stay unpacked. ``batch_size`` stays in jets.
    pack_jets: jet slots per packed row (at most this many jets share a row).
    pack_row_multiple: the rows of a packed global batch are rounded up to a multiple of this, so that
        few shapes compile; it must divide over the processes and the batch-sharded devices (checked as
        a global batch size). Packing needs ``train.grad_accum=1``.
    """

    format: str = "ftag_h5"
    jets_name: str = "jets"
    tracks_name: str = "tracks"
    jet_vars: list[str] = dataclasses.field(default_factory=lambda: ["pt_btagJes", "eta_btagJes"])
    track_vars: list[str] = dataclasses.field(default_factory=lambda: list(GN2_TRACK_VARS))
    max_tracks: int = 40
    norm_dict: str | None = None
    norm_max_jets: int = 200_000
    class_dict: str | None = None
    flavour_label: str = "auto"
    aux_labels: str = "auto"
    eval_fraction: float = 0.1
    check_finite: bool = True
    shuffle_block: int = 0
    bucket_tracks: list[int] = dataclasses.field(default_factory=list)
    bucket_window: int = 1
    pack_tracks: int = 0
    pack_jets: int = 16
    pack_row_multiple: int = 8

    resume_free: ClassVar[frozenset[str]] = DataConfig.resume_free | {"check_finite", "norm_max_jets"}

    def __post_init__(self):
        bad = [w for w in self.bucket_tracks if not 1 <= w <= self.max_tracks]
        if bad or sorted(set(self.bucket_tracks)) != list(self.bucket_tracks):
            raise ValueError(
                f"bucket_tracks must be increasing track counts in 1..max_tracks ({self.max_tracks}), "
                f"got {list(self.bucket_tracks)}"
            )
        if self.bucket_window < 1:
            raise ValueError(f"bucket_window must be at least 1 (global batches), got {self.bucket_window}")
        self._check_packing()

    def _check_packing(self) -> None:
        if self.pack_tracks < 0:
            raise ValueError(f"data.pack_tracks must be >= 0 (0: unpacked batches), got {self.pack_tracks}")
        if not self.pack_tracks:
            return
        if self.pack_tracks < self.max_tracks:
            raise ValueError(
                f"data.pack_tracks={self.pack_tracks} track slots per packed row cannot hold a jet of "
                f"data.max_tracks={self.max_tracks} tracks: use at least {self.max_tracks}"
            )
        if self.pack_jets < 1:
            raise ValueError(f"data.pack_jets (jet slots per packed row) must be >= 1, got {self.pack_jets}")
        if self.pack_row_multiple < 1:
            raise ValueError(f"data.pack_row_multiple must be at least 1, got {self.pack_row_multiple}")
        if self.bucket_tracks or self.bucket_window > 1:
            raise ValueError(
                "data.pack_tracks (packed rows) and data.bucket_tracks / data.bucket_window (padding to "
                "bucket widths) are two ways to cut padding: use one (set data.bucket_tracks=[] and "
                "data.bucket_window=1, or data.pack_tracks=0)"
            )

    def global_batch_sizes(self) -> list[int]:
        # packed: the rows of a global batch are multiples of pack_row_multiple; evaluation stays
        # unpacked, in batches of batch_size jets
        return sorted({self.batch_size, self.pack_row_multiple}) if self.pack_tracks else [self.batch_size]

    def microbatch_problem(self) -> str | None:
        if self.pack_tracks:
            return (
                "data.pack_tracks: the rows of a packed batch hold unequal numbers of jets, so averaging "
                "per-microbatch means would weigh jets unequally; use train.grad_accum=1 with packing"
            )
        return None

    def describe_batch(self, size: int) -> str:
        if self.pack_tracks and size == self.pack_row_multiple and size != self.batch_size:
            return "data.pack_row_multiple (the rows of a packed batch are multiples of it)"
        return "data.batch_size"
