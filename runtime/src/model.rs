//! A model: container bytes (mapped or static) plus the validated graph.
//!
//! Opening parses the header and validates the graph; it never reads or copies tensor
//! bytes, so open time depends on the number of tensors, not on their size. Tensor views
//! are handed out as slices of the mapping. A [`Model`] is a cheap handle (an `Arc`):
//! clone it into as many sessions and threads as needed; they all share one mapping, and
//! processes that open the same file share its page-cache pages.
//!
//! A mapped file can change under the mapping (another process truncates or rewrites it).
//! The contract (README, "Files under a live model"): a file replaced by rename is not a
//! change — the model keeps the inode it opened; a truncation or an in-place write is
//! detected and every run that could have seen it fails with [`Error::FileChanged`]
//! instead of faulting (SIGBUS) or mixing versions. Detection is [`Model::check_file`]:
//! the sticky flag of the SIGBUS guard (`graft_plugin_abi::mapguard`, which turns a read
//! past the new end of file into a zero page) plus one `fstat` compared with the one taken
//! at open (size, inode, mtime; not ctime, which a `chmod` or a
//! hard link also moves). Sessions call it after every run; comparing with the
//! stamp taken at open, not at the previous run, makes one check per run enough.

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
    Mapped(Mapped),
}

/// A mapped file and what is needed to notice it changing.
#[cfg(feature = "std")]
struct Mapped {
    /// Unregisters before `map` is unmapped (fields drop in declaration order).
    guard: Option<graft_plugin_abi::mapguard::Guard>,
    map: memmap2::Mmap,
    /// Kept open: `fstat` on it sees the mapped inode whatever the path now names.
    file: std::fs::File,
    stamp: Stamp,
}

/// What `fstat` says about a file, as far as a change of contents shows.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: (u64, u64),
    mtime: (i64, i64),
}

#[cfg(feature = "std")]
impl Stamp {
    fn of(file: &std::fs::File) -> std::io::Result<Stamp> {
        let meta = file.metadata()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Ok(Stamp { len: meta.len(), inode: (meta.dev(), meta.ino()), mtime: (meta.mtime(), meta.mtime_nsec()) })
        }
        #[cfg(not(unix))]
        {
            let nanos = |t: std::io::Result<std::time::SystemTime>| {
                t.ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or((0, 0), |d| (d.as_secs() as i64, i64::from(d.subsec_nanos())))
            };
            Ok(Stamp { len: meta.len(), inode: (0, 0), mtime: nanos(meta.modified()) })
        }
    }
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Static(b) => b,
            Storage::Owned(b) => b.as_slice(),
            #[cfg(feature = "std")]
            Storage::Mapped(m) => &m.map,
        }
    }
}

struct Inner {
    storage: Storage,
    envelope: Envelope,
    graph: Graph,
    source: Option<String>,
    /// [`Model::fingerprint`], computed on first use.
    #[cfg(feature = "std")]
    fingerprint: std::sync::OnceLock<u64>,
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
    /// Replacing the file by rename (the way to publish a new version) leaves this model
    /// on the version it opened; truncating or rewriting the file in place makes every
    /// later run fail with [`Error::FileChanged`] (module docs) — open it again (or load
    /// the new version through a registry) to use the new contents.
    #[cfg(feature = "std")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Model> {
        let path = path.as_ref();
        // Checked before opening: opening a FIFO would block until a writer appears.
        let not_regular =
            || Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
        if !std::fs::metadata(path).map_err(|e| Error::io(path, e))?.is_file() {
            return Err(not_regular());
        }
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(not_regular());
        }
        let stamp = Stamp::of(&file).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only. Another process may truncate or rewrite the
        // file while it is mapped; reads never become UB in Rust's sense (the bytes are
        // plain data of types valid for every bit pattern), a read past a new end of file
        // is caught by the SIGBUS guard registered below, and `check_file` refuses every
        // run that could have seen a change (module docs).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let guard = graft_plugin_abi::mapguard::register(map.as_ptr(), map.len());
        let mapped = Mapped { guard, map, file, stamp };
        let model = Model::from_storage(Storage::Mapped(mapped), Some(path.display().to_string()))
            .map_err(|e| e.in_file(path))?;
        // Parsing read the header: a truncation during it is a change too.
        model.check_file()?;
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
        crate::finite::check_parameters(bytes, &envelope, &graph)?;
        Ok(Model {
            inner: Arc::new(Inner {
                storage,
                envelope,
                graph,
                source,
                #[cfg(feature = "std")]
                fingerprint: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Tells the kernel how the mapping will be read: embedding tables at random,
    /// everything else soon and in order. Advisory only; failures are ignored.
    #[cfg(feature = "std")]
    fn advise_access(&self) {
        #[cfg(unix)]
        if let Storage::Mapped(Mapped { map, .. }) = &self.inner.storage {
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
        if let Storage::Mapped(Mapped { map, .. }) = &self.inner.storage {
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

    /// A 64-bit fingerprint of the model: XXH64 ([`crate::hash`]) of every byte of the
    /// container (header, graph and all tensor data), so state saved against one model (an
    /// error memory) is refused on any other, however small the difference. Not a
    /// cryptographic hash.
    ///
    /// Computed on first call and cached (with `std`), so opening stays independent of the
    /// model's size and only users of the fingerprint pay for reading the whole file
    /// (README, "Files under a live model", has the measured rate).
    pub fn fingerprint(&self) -> u64 {
        #[cfg(feature = "std")]
        {
            *self.inner.fingerprint.get_or_init(|| crate::hash::xxh64(self.bytes(), 0))
        }
        #[cfg(not(feature = "std"))]
        {
            crate::hash::xxh64(self.bytes(), 0)
        }
    }

    /// Whether the file behind a mapped model is still the one opened: `Ok` for models
    /// not backed by a mapping; [`Error::FileChanged`] once a read faulted past a new end
    /// of file (SIGBUS guard) or `fstat` shows another size, inode or mtime than at
    /// open. Sticky: a changed model stays refused until opened again. About one `fstat`
    /// (~1.2 µs measured); sessions call it after each run.
    pub fn check_file(&self) -> Result<()> {
        #[cfg(feature = "std")]
        if let Storage::Mapped(m) = &self.inner.storage {
            let path = || self.inner.source.clone().unwrap_or_default();
            if m.guard.as_ref().is_some_and(graft_plugin_abi::mapguard::Guard::faulted) {
                return Err(Error::FileChanged {
                    path: path(),
                    detail: "the file was truncated while mapped (a read past its new end returned zeros)".into(),
                });
            }
            let now = Stamp::of(&m.file).map_err(|e| Error::FileChanged {
                path: path(),
                detail: alloc::format!("cannot stat the mapped file: {e}"),
            })?;
            if now != m.stamp {
                let detail = if now.len != m.stamp.len {
                    alloc::format!("the file changed size from {} to {} bytes while mapped", m.stamp.len, now.len)
                } else {
                    "the file was modified in place while mapped (its modification time changed)".into()
                };
                return Err(Error::FileChanged { path: path(), detail });
            }
        }
        Ok(())
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
