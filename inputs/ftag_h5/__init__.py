"""ATLAS flavour-tagging HDF5 input for GN2: the files training-dataset-dumper (and umami-preprocessing)
write and salt reads.

File layout: a structured 1-D dataset ``jets`` (``pt_btagJes``, ``eta_btagJes``, the label
``flavour_label`` and/or ``HadronConeExclTruthLabelID``, ...) and a structured 2-D dataset ``tracks`` of
shape ``[n_jets, 40]`` with a boolean field ``valid`` and per-track fields; optionally the track truth
labels ``ftagTruthOriginLabel`` (8 classes: Pileup, Fake, Primary, FromB, FromBC, FromC, FromTau,
OtherSecondary) and ``ftagTruthVertexIndex`` (older dumps: ``truthOriginLabel``, ``truthVertexIndex``).

Batch (numpy, what the GN2 model consumes):

=================  =====================================  ==========================================
key                shape, dtype                           content
=================  =====================================  ==========================================
``tracks``         [b, max_tracks, n_track + n_jet] f32   normalised ``track_vars`` then ``jet_vars``
                                                          (jet values repeated on every track);
                                                          0 on padded slots
``valid``          [b, max_tracks] bool                   the file's mask, holes kept
``flavour``        [b] int32                              0 = b, 1 = c, 2 = light, 3 = tau
``track_origin``   [b, max_tracks] int32 (if present)     origin class 0..7, -1 on padded slots; a
                                                          valid track's -1 or -2 (labels salt ignores:
                                                          the loss skips every negative) is kept
``track_vertex``   [b, max_tracks] int32 (if present)     truth vertex index, -1 on padded slots
=================  =====================================  ==========================================

Flavour (``flavour_label="auto"``): ``flavour_label`` when the jets dataset carries the class names in its
``flavour_label`` attribute (umami-preprocessing output; names bjets/cjets/ujets/taujets), else
``HadronConeExclTruthLabelID`` (5/4/0/15, and the extended 54/55/44), else a bare ``flavour_label``
taken as 0..3 = b, c, light, tau. Any other value names the field to use, read the same way.

Splits: ``split="eval"`` reads ``cfg.eval_path``; when that is None, the last ``cfg.eval_fraction`` of
the jets of every training file is held out: ``"train"`` reads the first part of each file and
``"eval"`` the tail. (With ``cfg.path`` None too, both come from the default set of
``smilejax.models.gn2.make_synthetic``.)

Normalisation: ``(x - mean) / std`` from a norm dict ``{jets|tracks: {var: {mean, std}}}`` (the
umami-preprocessing/salt format, YAML or JSON). With ``cfg.norm_dict`` None it is computed on the valid
tracks of the first ``cfg.norm_max_jets`` training jets and cached as YAML next to the first file (or in
``$SMILEJAX_CACHE/ftag_norm`` when that folder is read-only).

Reading: sorted indices are split per file; each file's rows are read with one HDF5 read per dataset
(a slice when the rows are dense, else one hyperslab selection of the scattered rows; never a Python
loop over jets or runs: each read call of a compound dataset costs ~0.1-0.3 ms of setup), of only the
needed fields. Files are opened lazily, once per process and thread (never shared across fork), without
HDF5 file locking (Lustre/GPFS). LZ4/Zstd files (atlas-ftag-tools' writer default) need ``hdf5plugin``,
imported when installed.

Order (``SPEC.pipeline = batches.from_config``): ``pipeline.batched``'s global per-jet shuffle for
uncompressed files; for compressed chunked files, where every scattered jet decompresses its whole chunk,
blocks of ``chunk`` consecutive jets are shuffled instead (``pipeline.BlockOrder``, ``cfg.shuffle_block``),
which keeps the same global-batch and resumption guarantees.

Bucketing (``cfg.bucket_tracks``, e.g. ``[16, 24]``): each global batch is padded only to the smallest
bucket width that holds its jets' valid tracks (``max_tracks`` is always the last bucket, so no jet loses
a track). The valid tracks are then moved to the front of each jet, in their file order (the ``valid``
mask becomes a prefix; GN2 is invariant under permutations of the tracks). The width comes from a
per-jet track-count index (``track_counts``: one scan of the ``valid`` field per file, cached as
``.npy`` next to the norm dict), so every process picks the same width for a global batch. With
``cfg.bucket_window`` > 1 the jets of that many consecutive global batches are sorted by track count and
cut into batches of similar multiplicity, whose order is shuffled (see ``pipeline.Buckets``): this is
what cuts the padding, since a random batch of thousands of jets nearly always holds one long jet,
but it changes the batches (multiplicity-homogeneous, so flavour-correlated); the default window 1
keeps exactly the batches of an unbucketed run and only trims their padding. On compressed chunked
files a window > 1 also scatters each batch over the window's chunks (more decompression).

Packing (``cfg.pack_tracks``, e.g. 80, with ``cfg.pack_jets`` jet slots per row): training batches put
several jets in one row of ``pack_tracks`` track slots (``smilejax.inputs.packing``; first-fit decreasing
by track count), so padding falls without sorting: the jets of a global batch stay the uniform random
sample (and each process the same slice of it) that an unpacked run reads, ``batch_size`` stays in jets.
Each process packs its slice; all agree on the row count R per process (the fullest slice's rows, rounded
up so that the global batch's rows, R × processes, are a multiple of ``cfg.pack_row_multiple``, which is
checked like a global batch size), so few shapes compile.
Only the training stream is packed (the "train" split, unless read in order with ``shuffle=False`` as
predictions do); evaluation, export and serving stay unpacked. A packed batch
(T = ``pack_tracks``, J = ``pack_jets``):

=================  =====================================  ==========================================
key                shape, dtype                           content
=================  =====================================  ==========================================
``tracks``         [R, T, n_track + n_jet] f32            each jet's valid tracks contiguous, in file
                                                          order; 0 on empty slots
``valid``          [R, T] bool                            a track in the slot
``segment``        [R, T] int32                           the track's jet slot 0..J-1, -1 when empty
``track_origin``   [R, T] int32 (if present)              as unpacked; -1 on empty slots
``track_vertex``   [R, T] int32 (if present)              as unpacked; -1 on empty slots
``flavour``        [R, J] int32                           as unpacked; -1 in an empty jet slot
``jet_valid``      [R, J] bool                            a jet in the slot (a jet may have 0 tracks)
=================  =====================================  ==========================================

Class weights (``cfg.class_dict``, salt's ``use_class_dict``): ``SPEC.model_config`` puts the class dict's
``jets/flavour_label`` and ``tracks/ftagTruthOriginLabel`` weights into the model's ``class_weights`` (the
jet-flavour and track-origin losses); a model config that gives ``class_weights`` too is an error, as in
salt. The weights follow the order of the file's classes, which must then be b, c, light, tau.

Checks: ``check(paths)`` scans whole files up front (``smilejax data check``; ``python -m
smilejax.inputs.ftag_h5 FILES`` prints its report).

Modules: ``config`` (``FtagConfig``), ``labels`` (flavours, track origins, class dicts), ``hdf5`` (files,
datasets, reading rows, track counts), ``norm`` (norm dicts), ``source`` (the reader and the splits),
``batches`` (the pipeline: buckets, packing), ``commands`` (``smilejax data norm|check``), ``raw`` (what
exported models take: the variables as stored, normalised and masked inside the exported program).
"""

from __future__ import annotations

import os

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")  # before h5py opens anything (Lustre)

from ..spec import DatasetSpec
from .batches import batch_schema, buckets, from_config, packed, shuffle_block
from .config import GN2_TRACK_VARS, FtagConfig
from .hdf5 import FileInfo, counts_cache_path, expand_paths, file_track_counts, inspect_file, open_h5
from .labels import (
    FLAVOUR_NAMES,
    FLAVOURS,
    IGNORED_ORIGINS,
    ORIGIN_FIELDS,
    TRACK_ORIGINS,
    TRUTH_LABEL_FIELDS,
    TRUTH_LABEL_IDS,
    VERTEX_FIELDS,
    class_weights,
    load_class_dict,
    model_config,
)
from .norm import compute_norm_dict, load_norm_dict, write_norm_dict
from .raw import RAW
from .scans import check, compute_class_dict
from .source import FtagH5Source
from .source import source as _source  # ``source`` stays the submodule: SPEC.source is the function

SPEC = DatasetSpec(
    name="ftag_h5",
    config=FtagConfig,
    source=_source,
    pipeline=from_config,
    model_config=model_config,
    raw=RAW,  # exported models take the files' variables (``raw``)
)

__all__ = [
    "FLAVOURS",
    "FLAVOUR_NAMES",
    "GN2_TRACK_VARS",
    "IGNORED_ORIGINS",
    "ORIGIN_FIELDS",
    "SPEC",
    "TRACK_ORIGINS",
    "TRUTH_LABEL_FIELDS",
    "TRUTH_LABEL_IDS",
    "VERTEX_FIELDS",
    "FileInfo",
    "FtagConfig",
    "FtagH5Source",
    "batch_schema",
    "buckets",
    "check",
    "class_weights",
    "compute_class_dict",
    "compute_norm_dict",
    "counts_cache_path",
    "expand_paths",
    "file_track_counts",
    "from_config",
    "inspect_file",
    "load_class_dict",
    "load_norm_dict",
    "model_config",
    "open_h5",
    "packed",
    "shuffle_block",
    "write_norm_dict",
]
