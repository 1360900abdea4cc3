// Package chunker splits byte streams into chunks: fixed-size for disk
// images, content-defined (FastCDC-style) for container archives.
//
// The package is pure: it reads an [io.Reader] or a byte slice and reports
// cut points. It knows nothing about hashing, storage or the catalog, and
// imports only the standard library.
//
// # Fixed-size chunks (disks)
//
// A VM disk is pulled over NBD as extents, and QEMU's dirty bitmap has a
// granularity of 4 MiB. [Fixed] cuts at every [DefaultFixedSize] bytes of the
// disk, so chunk i always covers disk bytes [i*4 MiB, (i+1)*4 MiB): an
// incremental backup (bitmap_mode=reuse) re-reads exactly the chunks whose
// bitmap bit is set and keeps the previous snapshot's digest for the rest, and
// the fixed index needs no offsets (one digest per chunk). Data inserted in
// the middle of a disk does not shift later blocks, so content-defined cuts
// would buy nothing there and would break the 1:1 mapping to bitmap bits.
// Only the last chunk of a disk whose size is not a multiple of the chunk
// size is short. [IsZero] finds all-zero chunks, which are never stored.
//
// # Content-defined chunks (container archives)
//
// A container backup is a tar stream. Inserting or removing a file shifts
// every later byte, so fixed cuts would make every later chunk new. [CDC] and
// [Cutter] place cuts where the content says so: a gear rolling hash over the
// last 64 bytes is tested against a mask, so after an edit the cut points
// realign with the old ones and only the chunks around the edit change. The
// archive pipeline cuts each tar entry's payload on its own, so headers,
// whose PAX times change on every run, never spoil the chunks of an
// unchanged file: [Cutter.Cut] for a payload already in memory, or a [CDC]
// that is [CDC.Reset] onto an io.LimitReader of the entry for a large one.
//
// The algorithm follows FastCDC (Xia et al., USENIX ATC 2016; extended in
// IEEE TPDS 2020): cut-point skipping (no hashing of the first Min bytes of a
// chunk, apart from a 64-byte warm-up) and normalized chunking at level 2 (a
// mask with two more bits than log2(Avg) before Avg, two fewer after it),
// which narrows the size distribution around Avg. A chunk is at least Min
// bytes (except the last one of a stream) and at most Max bytes.
//
// # Stability
//
// For a given [Params], cut points depend only on the data: not on how the
// reader splits its reads, nor on whether the bytes came through [CDC] or
// [Cutter]. The gear table (derived from a fixed seed, see gear.go), the mask
// layout and the cut rule are part of the on-disk format, because dynamic
// indexes store the resulting chunk boundaries and dedup relies on the next
// backup producing the same ones. The golden vectors in testdata/ pin them;
// changing any of them requires a new algorithm version, never an edit.
//
// # Memory
//
// Both chunkers write chunk data into a buffer supplied by the caller and
// reuse it when its capacity is large enough, so a pipeline with N workers
// holds N × Max bytes of chunk data, from a pool of Max-sized buffers. [CDC]
// also owns one lookahead buffer of 2 × Max bytes; [Fixed] owns none.
package chunker
