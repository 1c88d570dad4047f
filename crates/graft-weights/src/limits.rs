//! Every size limit graft-weights puts on what a file may make it allocate or do, in one
//! place. A file over one of them is refused with an error that names the limit (its name
//! here) and, where a real file could plausibly need more, what to do about it.
//!
//! The principle: memory grows with the bytes a file really holds, never with a number the
//! file merely states. Each limit below is either a multiple of the input's real size (so a
//! hostile file costs at most a small multiple of its own size) or an absolute cap far
//! above anything a real state dict needs (so even a large hostile file is refused early,
//! well below a gigabyte).

/// Largest pickle (a zip checkpoint's `data.pkl`, after inflating) that is read at all.
/// `data.pkl` holds about 240 bytes per tensor (torchvision's ResNet-18: 14,827 bytes for
/// 62 tensors), not the tensors' data: 64 MiB is over 250,000 tensors. A larger one is a
/// bomb or not a state dict.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Memory the pickle VM may use for its objects, per byte of pickle it runs. Every opcode
/// creates at most one object (a 32-byte arena slot plus what it holds: 8 bytes per item of
/// a container, the bytes of a string, 16 bytes of allocator overhead per allocation), so
/// one byte of pickle can cost up to 56 bytes; real state dicts, which memoise nearly every
/// object, use 11 to 12.5 (11.2 for MobileNetV2, 12.5 for ResNet-18, measured by the test
/// `pickle::tests::real_state_dict_pickles_stay_far_below_the_memory_budget` on
/// torchvision's ResNet-18 and MobileNetV2 checkpoints). Objects, memo entries and every
/// copy the VM makes (container arguments, storage descriptions) are charged.
pub const PICKLE_MEMORY_PER_BYTE: u64 = 32;

/// Memory the pickle VM may use regardless of the pickle's size (so tiny pickles are never
/// refused for a handful of objects).
pub const PICKLE_MEMORY_BASE: u64 = 1 << 20;

/// Absolute cap on the pickle VM's memory, whatever the pickle's size: enough for a real
/// state dict of about 90,000 tensors (a 21 MB pickle at 12.5 bytes per byte), and it keeps a
/// hostile 64 MiB pickle's whole run far below a gigabyte: it is refused after its first
/// 5 to 25 MB.
pub const MAX_PICKLE_MEMORY: u64 = 256 << 20;

/// Deepest pickle stack. A state dict never stacks more than a few dozen items.
pub const MAX_PICKLE_STACK: usize = 1 << 20;

/// Deepest nesting of pickle MARKs (each open tuple/list/dict literal is one).
pub const MAX_PICKLE_MARK_DEPTH: usize = 1 << 12;

/// Longest text argument of a protocol-0 opcode (GLOBAL's module and name, INT, FLOAT...).
pub const MAX_PICKLE_LINE: usize = 4096;

/// Most dimensions a tensor may have (PyTorch itself allows 64).
pub const MAX_TENSOR_DIMS: usize = 64;

/// Deflate cannot expand data by more than about 1032:1, so a zip entry declaring a larger
/// ratio is lying about its size; it is refused before anything is inflated.
pub const MAX_DEFLATE_RATIO: u64 = 1032;

/// Bytes inflated from all the compressed entries of one zip checkpoint together, as a
/// multiple of the archive's size. `torch.save` stores entries uncompressed (ratio 1); a
/// checkpoint re-zipped with deflate shrinks by 10 % or so (weights are noisy floats), and
/// even a checkpoint that is mostly zeros rarely compresses past 20:1. Re-saving the file
/// with `torch.save` (uncompressed) gets under it.
pub const MAX_ARCHIVE_INFLATE_RATIO: u64 = 64;

/// Inflated bytes allowed regardless of the archive's size, on top of
/// [`MAX_ARCHIVE_INFLATE_RATIO`] (small files with a few zero-filled buffers).
pub const ARCHIVE_INFLATE_BASE: u64 = 16 << 20;

/// Largest `byteorder` entry: it holds `little` or `big`.
pub const MAX_BYTEORDER_BYTES: u64 = 16;

/// Tensors may expand to at most this many times the elements their storages hold
/// (overlapping or stride-0 views let a tiny storage describe an enormous tensor; real
/// checkpoints share a storage a few times at most, for tied weights)...
pub const MAX_VIEW_EXPANSION: u64 = 4;

/// ...plus this many elements (small broadcast buffers).
pub const VIEW_EXPANSION_SLACK: u64 = 1 << 24;

/// Largest TensorFlow checkpoint `.index` file read (it is read whole). An index holds about
/// 50 to 150 bytes per variable, so this is over a million variables.
pub const MAX_TF_INDEX_BYTES: u64 = 256 << 20;

/// Longest key (variable name) in a TensorFlow checkpoint index. TF2's object-graph names run
/// to a few hundred bytes.
pub const MAX_TF_KEY_BYTES: u64 = 64 << 10;

/// The keys of a checkpoint index may expand (they are prefix-compressed) to at most this
/// many times the index's size, plus 1 MiB: real indexes compress their keys 2 to 4 times, and
/// a hostile one repeating a long shared prefix is stopped before it costs more.
pub const TF_KEY_EXPANSION: u64 = 16;

/// Largest Caffe `.caffemodel` read (it is read whole): VGG16's is 553 MB.
pub const MAX_CAFFE_BYTES: u64 = 2 << 30;

/// Most blobs one Caffe layer may hold (convolution and inner product have 2, BatchNorm 3).
pub const MAX_CAFFE_BLOBS_PER_LAYER: usize = 64;
