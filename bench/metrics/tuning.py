"""The metrics' tuning constants in one place, each with why it has its value. They change speed
and memory, never a number: every strategy counts exactly (tests run them at extreme values)."""

#: the memory budget of one query chunk's score block (and what its ranking gathers from it)
DEFAULT_CHUNK_BYTES = 128 * 2**20
#: (candidate item, positive) comparisons per step of the candidate kernel: bounds its extra memory
#: (about 17 bytes each: the gathered threshold, gallery index, comparison and count)
CANDIDATE_BUDGET = 1 << 22
#: histogram bins between a row's lowest and highest positive score (the binned count), at most,
#: and at least this many items a bin (short rows: a histogram wider than the row costs more than it saves)
SCORE_BINS = 1024
ITEMS_PER_BIN = 4
#: scores counted together (whole rows, at least one): their working buffers (17 bytes a score) stay
#: in the processor's caches between the kernel's passes
COUNT_ELEMENTS = 1 << 21
#: up to this many positives per query, comparing each with every item beats the histogram
COMPARED_POSITIVES = 8
#: the choice between the candidate and the binned count looks at every this-many-th row
DECISION_STRIDE = 8
#: gallery items per score tile. Every score is computed inside a tile of this width (and a query
#: chunk padded to a multiple of ``QUERY_ROW_MULTIPLE``), so its bits do not depend on how the
#: gallery is split across processes: BLAS libraries choose their summation order by matrix shape
#: and thread count, and fixed tile shapes take the shape out of it.
SCORE_TILE = 4096
#: query chunks are padded to a multiple of this (no padding rows to compute inside a tile) ...
QUERY_ROW_MULTIPLE = 16
#: ... and hold at least this many queries (narrower chunks waste the matmul)
MIN_QUERY_ROWS = 32
#: the columns of a process's images are counted in slabs of up to this many chunks' memory ...
COLUMN_SLAB_CHUNKS = 2
#: ... and at least this many texts wide (narrower rows cost more per score than a pass of their own)
MIN_COLUMN_SLAB = 1024
#: texts per group when the positive pairs are scored before the pass
POSITIVE_GROUP = 512
#: columns transposed at a time: a tile that stays in cache, much faster than a whole transpose
TRANSPOSE_TILE = 1024
