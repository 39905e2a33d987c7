//! Writes `.graft` containers: safetensors with 64-byte-aligned tensors.
//!
//! Tensors are streamed: each one is a declared dtype/shape plus a closure that writes
//! exactly its bytes, so a multi-gigabyte table can be generated and quantized row by row
//! without ever being held in memory. Filler `__pad.N` tensors keep every real tensor at
//! a 64-byte file offset; the JSON header is padded with spaces so the data section itself
//! starts on a 64-byte boundary. Files are written to a unique temporary name, synced and
//! renamed (`graft_plugin_abi::files`), so a crash never leaves a truncated model under the
//! final name, and only regular files are ever replaced.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use serde_json::{Map, Value};

use crate::container::{GRAPH_KEY, PAD_PREFIX, TENSOR_ALIGN};
use crate::error::{Error, Result};
use crate::format::DType;

/// Writes a tensor's bytes.
pub type Producer<'a> = Box<dyn FnMut(&mut dyn Write) -> io::Result<()> + 'a>;

/// One tensor to write.
pub struct TensorOut<'a> {
    /// Name in the header.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Writes exactly `dtype.size() · Π shape` bytes.
    pub producer: Producer<'a>,
}

impl std::fmt::Debug for TensorOut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorOut")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

impl<'a> TensorOut<'a> {
    /// A tensor from bytes already in memory.
    pub fn bytes(name: impl Into<String>, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> TensorOut<'a> {
        TensorOut { name: name.into(), dtype, shape, producer: Box::new(move |w| w.write_all(&bytes)) }
    }

    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &'a [f32]) -> TensorOut<'a> {
        TensorOut {
            name: name.into(),
            dtype: DType::F32,
            shape,
            producer: Box::new(move |w| w.write_all(bytemuck::cast_slice(values))),
        }
    }

    fn byte_len(&self) -> Option<u64> {
        self.shape.iter().try_fold(self.dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
    }
}

/// Counts bytes and forwards them.
struct Counting<'w> {
    inner: &'w mut dyn Write,
    written: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The layout of a container about to be written: padded header and fillers.
struct Plan {
    json: String,
    /// Filler bytes before tensor `i`.
    pads: BTreeMap<usize, u64>,
    /// Total file size.
    total: u64,
}

/// Lays out data offsets, inserting fillers so each tensor starts 64-byte aligned
/// relative to the data section (which itself starts aligned).
fn plan(graph_json: &str, tensors: &[TensorOut<'_>]) -> Result<Plan> {
    let mut header = Map::new();
    let mut metadata = Map::new();
    metadata.insert(GRAPH_KEY.into(), Value::String(graph_json.into()));
    header.insert("__metadata__".into(), Value::Object(metadata));
    let mut cursor = 0u64;
    let mut pads: BTreeMap<usize, u64> = BTreeMap::new();
    for (i, t) in tensors.iter().enumerate() {
        if t.name.starts_with(PAD_PREFIX) || t.name == "__metadata__" {
            return Err(Error::TensorEntry { tensor: t.name.clone(), detail: "reserved tensor name".into() });
        }
        if header.contains_key(&t.name) {
            return Err(Error::DuplicateName { kind: "tensor", name: t.name.clone() });
        }
        let gap = cursor.next_multiple_of(TENSOR_ALIGN as u64) - cursor;
        if gap > 0 {
            let pad_name = format!("{PAD_PREFIX}{i}");
            header.insert(pad_name, entry(DType::U8, &[gap as usize], cursor, cursor + gap));
            pads.insert(i, gap);
            cursor += gap;
        }
        let overflow = || Error::TensorEntry { tensor: t.name.clone(), detail: "shape overflows".into() };
        let len = t.byte_len().ok_or_else(overflow)?;
        header.insert(t.name.clone(), entry(t.dtype, &t.shape, cursor, cursor + len));
        cursor = cursor.checked_add(len).ok_or_else(overflow)?;
    }
    let mut json = serde_json::to_string(&Value::Object(header))
        .map_err(|e| Error::HeaderJson { detail: format!("cannot serialize header: {e}") })?;
    let unpadded = 8 + json.len();
    json.extend(std::iter::repeat_n(' ', unpadded.next_multiple_of(TENSOR_ALIGN) - unpadded));
    let total = (8 + json.len() as u64).saturating_add(cursor);
    Ok(Plan { json, pads, total })
}

/// Writes a container with `graph_json` in its metadata to `out`. Returns bytes written.
pub fn write_container(out: &mut dyn Write, graph_json: &str, tensors: Vec<TensorOut<'_>>) -> Result<u64> {
    let plan = plan(graph_json, &tensors)?;
    emit(out, plan, tensors)
}

fn emit(out: &mut dyn Write, plan: Plan, mut tensors: Vec<TensorOut<'_>>) -> Result<u64> {
    let Plan { json, pads, .. } = plan;
    let io_err = |e: io::Error| Error::Io { path: "<container>".into(), source: e };
    let mut w = Counting { inner: out, written: 0 };
    w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io_err)?;
    w.write_all(json.as_bytes()).map_err(io_err)?;
    let zeros = [0u8; TENSOR_ALIGN];
    for (i, t) in tensors.iter_mut().enumerate() {
        if let Some(&gap) = pads.get(&i) {
            w.write_all(&zeros[..gap as usize]).map_err(io_err)?;
        }
        let before = w.written;
        (t.producer)(&mut w).map_err(io_err)?;
        let expected = t.byte_len().unwrap_or(0);
        if w.written - before != expected {
            return Err(Error::TensorEntry {
                tensor: t.name.clone(),
                detail: format!("producer wrote {} bytes, shape needs {expected}", w.written - before),
            });
        }
    }
    w.flush().map_err(io_err)?;
    Ok(w.written)
}

fn entry(dtype: DType, shape: &[usize], begin: u64, end: u64) -> Value {
    serde_json::json!({ "dtype": dtype.as_str(), "shape": shape, "data_offsets": [begin, end] })
}

/// Writes a container file atomically (unique temporary file, fsync, rename, directory
/// fsync; see `graft_plugin_abi::files`). A `path` that exists and is not a regular file
/// is refused with [`Error::NotRegularFile`]; on any error the temporary file is removed
/// and `path` is untouched.
pub fn write_file(path: &Path, graph_json: &str, tensors: Vec<TensorOut<'_>>) -> Result<u64> {
    graft_plugin_abi::files::check_target(path)
        .map_err(|source| Error::NotRegularFile { path: path.display().to_string(), source })?;
    let plan = plan(graph_json, &tensors)?;
    // A size the file system cannot hold fails now, not after writing terabytes.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Some(free) = graft_plugin_abi::files::available_space(dir)
        && plan.total > free
    {
        return Err(Error::io(
            path,
            io::Error::new(
                io::ErrorKind::StorageFull,
                format!("the container needs {} bytes; the file system has {free} free", plan.total),
            ),
        ));
    }
    // Errors of the container itself (not I/O) travel through the io::Error untouched.
    let mut inner: Option<Error> = None;
    let result = graft_plugin_abi::files::write_atomic(path, |file| {
        let mut buf = io::BufWriter::with_capacity(1 << 20, file);
        let n = emit(&mut buf, plan, tensors).map_err(|e| match e {
            Error::Io { source, .. } => source,
            e => {
                inner = Some(e);
                io::Error::other("container error")
            }
        })?;
        buf.flush()?;
        Ok(n)
    });
    match (result, inner) {
        (_, Some(e)) => Err(e),
        (Ok(n), None) => Ok(n),
        (Err(e), None) => Err(Error::io(path, e)),
    }
}
