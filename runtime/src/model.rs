//! A model: container bytes (mapped or static) plus the validated graph.
//!
//! Opening parses the header and validates the graph; it never reads or copies tensor
//! bytes, so open time depends on the number of tensors, not on their size. Tensor views
//! are handed out as slices of the mapping. A [`Model`] is a cheap handle (an `Arc`):
//! clone it into as many sessions and threads as needed; they all share one mapping, and
//! processes that open the same file share its page-cache pages.

use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;

use crate::container::{self, Envelope, TensorInfo};
use crate::error::{Error, Result};
use crate::format::WeightFormat;
use crate::graph::{self, Graph, WeightDef};
use crate::kernels::{WeightData, WeightMatrix};

/// Alignment the container buffer must have in memory (the strictest element type).
pub const BUFFER_ALIGN: usize = 4;

/// A 64-byte-aligned owned copy of a container.
struct AlignedBytes {
    blocks: alloc::vec::Vec<Block>,
    len: usize,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Block([u8; 64]);

impl AlignedBytes {
    fn copy_of(bytes: &[u8]) -> AlignedBytes {
        let mut blocks = alloc::vec![Block([0; 64]); bytes.len().div_ceil(64)];
        for (block, chunk) in blocks.iter_mut().zip(bytes.chunks(64)) {
            block.0[..chunk.len()].copy_from_slice(chunk);
        }
        AlignedBytes { blocks, len: bytes.len() }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `Block` is `repr(C)` over `[u8; 64]` with no padding, so the blocks are
        // `64 · blocks.len() >= len` initialized bytes.
        unsafe { core::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }
}

enum Storage {
    Static(&'static [u8]),
    Owned(AlignedBytes),
    #[cfg(feature = "std")]
    Mapped(memmap2::Mmap),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Static(b) => b,
            Storage::Owned(b) => b.as_slice(),
            #[cfg(feature = "std")]
            Storage::Mapped(m) => m,
        }
    }
}

struct Inner {
    storage: Storage,
    envelope: Envelope,
    graph: Graph,
    source: Option<String>,
}

/// An opened model. Cloning is cheap and shares the mapping.
#[derive(Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("source", &self.inner.source)
            .field("bytes", &self.inner.storage.bytes().len())
            .field("tensors", &self.inner.envelope.tensors.len())
            .field("nodes", &self.inner.graph.nodes.len())
            .finish()
    }
}

impl Model {
    /// Parses a model that is already in memory for the life of the program: a `static`
    /// array, flash on a microcontroller, or a leaked buffer. Nothing is copied.
    ///
    /// The buffer must be 4-byte aligned (tensors are 64-byte aligned relative to its start).
    pub fn from_bytes(bytes: &'static [u8]) -> Result<Model> {
        Model::from_storage(Storage::Static(bytes), None)
    }

    /// Copies a container into an owned, aligned buffer (for containers received over a
    /// network or built in memory; prefer [`Model::open`] or [`Model::from_bytes`]).
    pub fn from_slice_copy(bytes: &[u8]) -> Result<Model> {
        Model::from_storage(Storage::Owned(AlignedBytes::copy_of(bytes)), None)
    }

    /// Reads a `.graft` file into memory instead of mapping it (for file systems where
    /// mmap is unavailable or unwise).
    #[cfg(feature = "std")]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Model> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Model::from_storage(Storage::Owned(AlignedBytes::copy_of(&bytes)), Some(path.display().to_string()))
            .map_err(|e| e.in_file(path))
    }

    /// Memory-maps a `.graft` file read-only and validates it.
    ///
    /// The mapping is shared with the page cache: nothing is read until a tensor is used.
    /// The file must not be truncated or rewritten while the model (or any clone or
    /// session of it) is alive — the same contract as every mmap-based loader.
    #[cfg(feature = "std")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Model> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only and private to this process's view; the only
        // hazard is another process truncating or rewriting the file while it is mapped,
        // which this function's documentation forbids (as memmap2 and every mmap loader do).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let model =
            Model::from_storage(Storage::Mapped(map), Some(path.display().to_string())).map_err(|e| e.in_file(path))?;
        model.advise_access();
        Ok(model)
    }

    fn from_storage(storage: Storage, source: Option<String>) -> Result<Model> {
        let bytes = storage.bytes();
        let address = bytes.as_ptr() as usize;
        if !address.is_multiple_of(BUFFER_ALIGN) {
            return Err(Error::MisalignedBuffer { address, align: BUFFER_ALIGN });
        }
        let envelope = container::parse_envelope(bytes)?;
        let json = envelope.metadata.get(container::GRAPH_KEY).ok_or_else(|| Error::GraphJson {
            detail: alloc::format!("metadata has no `{}` key", container::GRAPH_KEY),
        })?;
        let graph = graph::parse(json, &envelope)?;
        Ok(Model { inner: Arc::new(Inner { storage, envelope, graph, source }) })
    }

    /// Tells the kernel how the mapping will be read: embedding tables at random,
    /// everything else soon and in order. Advisory only; failures are ignored.
    #[cfg(feature = "std")]
    fn advise_access(&self) {
        #[cfg(unix)]
        if let Storage::Mapped(map) = &self.inner.storage {
            use crate::graph::Op;
            use memmap2::Advice;
            let g = &self.inner.graph;
            for node in &g.nodes {
                let (weight, advice) = match node.op {
                    Op::EmbeddingBag { table, .. } => (table, Advice::Random),
                    Op::Linear { weight, .. } | Op::Cross { weight, .. } => (weight, Advice::WillNeed),
                    _ => continue,
                };
                let t = &self.inner.envelope.tensors[g.weights[weight].data];
                let _ = map.advise_range(advice, t.offset, t.len);
            }
        }
    }

    /// Asks the kernel to back the embedding tables of at least `min_table_bytes` with
    /// transparent huge pages (`madvise(MADV_HUGEPAGE)` on their ranges of the mapping);
    /// returns how many bag nodes' tables were advised (0 for a model that is not mapped,
    /// or off Linux).
    ///
    /// Opt-in, because it trades memory for speed: random gathers over a table far
    /// larger than the TLB's reach miss the TLB on almost every row, and 2 MiB pages
    /// remove those misses, but the kernel then reads and caches the table in 2 MiB
    /// folios, so a sparsely used table can cost up to 512× the page cache of its touched
    /// rows. It only takes effect for pages not yet in the page cache (file-backed huge
    /// pages also need a kernel that builds large page-cache folios for mapped files; see
    /// `FilePmdMapped` in `/proc/<pid>/smaps`). Measured on the demo's tables (26 × 6.4 MB
    /// q8, fresh uniform ids, batch 256, AMD EPYC VM, Linux 6.18): the tables were mapped
    /// with 2 MiB pages; gathers went from 81 to 55 ns per id with 8 ids prefetched ahead,
    /// and stayed within noise (47 → 46) with the executor's 32.
    #[cfg(feature = "std")]
    pub fn advise_huge_pages(&self, min_table_bytes: usize) -> usize {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped(map) = &self.inner.storage {
            let g = &self.inner.graph;
            let mut advised = 0;
            for node in &g.nodes {
                if let crate::graph::Op::EmbeddingBag { table, .. } = node.op {
                    let t = &self.inner.envelope.tensors[g.weights[table].data];
                    if t.len >= min_table_bytes && map.advise_range(memmap2::Advice::HugePage, t.offset, t.len).is_ok()
                    {
                        advised += 1;
                    }
                }
            }
            return advised;
        }
        let _ = min_table_bytes;
        0
    }

    /// The validated graph.
    pub fn graph(&self) -> &Graph {
        &self.inner.graph
    }

    /// The container's tensor table and metadata.
    pub fn envelope(&self) -> &Envelope {
        &self.inner.envelope
    }

    /// The whole container.
    pub fn bytes(&self) -> &[u8] {
        self.inner.storage.bytes()
    }

    /// Where the model was opened from, if it was a file.
    pub fn source(&self) -> Option<&str> {
        self.inner.source.as_deref()
    }

    /// Bytes of one tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes()[info.range()]
    }

    /// Whether `self` and `other` are handles to the same opened model (not merely equal
    /// files): adapters are validated against one model and may only run on it.
    pub fn same_as(&self, other: &Model) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A 64-bit fingerprint of the model: FNV-1a over the header (graph, tensor names,
    /// shapes, offsets) and 4 KiB samples from the start, middle and end of every tensor.
    /// Sampling keeps it O(tensors), not O(bytes); a retrained model changes every
    /// sampled weight, so state saved against one model (an error memory) is refused on
    /// another. Not a cryptographic hash.
    pub fn fingerprint(&self) -> u64 {
        const SAMPLE: usize = 4096;
        let bytes = self.bytes();
        let mut hash = fnv1a(0xcbf2_9ce4_8422_2325, &bytes[..self.inner.envelope.data_start.min(bytes.len())]);
        for info in &self.inner.envelope.tensors {
            let data = self.tensor_bytes(info);
            let mid = data.len() / 2;
            for start in [0, mid.saturating_sub(SAMPLE / 2), data.len().saturating_sub(SAMPLE)] {
                hash = fnv1a(hash, &data[start..(start + SAMPLE).min(data.len())]);
            }
        }
        hash
    }

    /// An f32 vector tensor (bias, gain) by envelope index.
    pub fn vector(&self, tensor: usize) -> Result<&[f32]> {
        let info = &self.inner.envelope.tensors[tensor];
        cast(self.tensor_bytes(info), &info.name)
    }

    /// An f32 constant by graph constant index.
    pub fn constant_f32(&self, index: usize) -> Result<&[f32]> {
        let def = &self.inner.graph.constants[index];
        cast(self.tensor_bytes(&self.inner.envelope.tensors[def.tensor]), &def.name)
    }

    /// An i64 constant by graph constant index.
    pub fn constant_i64(&self, index: usize) -> Result<&[i64]> {
        let def = &self.inner.graph.constants[index];
        cast(self.tensor_bytes(&self.inner.envelope.tensors[def.tensor]), &def.name)
    }

    /// A typed view of a weight matrix by graph weight index.
    pub fn weight(&self, index: usize) -> Result<WeightMatrix<'_>> {
        let def: &WeightDef = &self.inner.graph.weights[index];
        let tensors = &self.inner.envelope.tensors;
        let info = &tensors[def.data];
        let bytes = self.tensor_bytes(info);
        let data = match def.format {
            WeightFormat::F32 => WeightData::F32(cast(bytes, &info.name)?),
            WeightFormat::F16 => WeightData::F16(cast(bytes, &info.name)?),
            WeightFormat::Bf16 => WeightData::Bf16(cast(bytes, &info.name)?),
            WeightFormat::Q8 => {
                let scale = def.scale.map(|s| &tensors[s]).ok_or_else(|| Error::MissingTensor {
                    node: def.name.clone(),
                    tensor: alloc::format!("{}.scale", def.name),
                })?;
                WeightData::Q8 { codes: cast(bytes, &info.name)?, scales: cast(self.tensor_bytes(scale), &scale.name)? }
            }
            WeightFormat::Q8Rowwise => WeightData::Q8Rowwise(bytes),
            WeightFormat::Q4 => WeightData::Q4(bytes),
        };
        Ok(WeightMatrix { data, rows: def.rows, cols: def.cols })
    }
}

fn cast<'a, T: bytemuck::AnyBitPattern>(bytes: &'a [u8], tensor: &str) -> Result<&'a [T]> {
    bytemuck::try_cast_slice(bytes).map_err(|_| Error::Misaligned {
        tensor: tensor.into(),
        offset: bytes.as_ptr() as u64,
        align: core::mem::align_of::<T>() as u64,
    })
}

/// FNV-1a, continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
