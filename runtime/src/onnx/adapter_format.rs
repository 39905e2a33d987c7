//! ONNX Runtime's `.onnx_adapter` file format, written from Rust.
//!
//! ONNX Runtime has its own LoRA mechanism ("multi-LoRA"): the model declares each LoRA
//! matrix as a graph input backed by a zero initializer, and an adapter file holds named
//! tensors that a run substitutes for those inputs (`RunOptions` with an active adapter).
//! That is graft's natural benchmark peer for LoRA, and the benchmarks must be able to
//! produce the adapter file themselves — without Python, which is where ONNX Runtime's
//! only writer (`onnxruntime.AdapterFormat`) lives.
//!
//! The file is a FlatBuffer (schema `onnxruntime/lora/adapter_format/adapter_schema.fbs`,
//! file identifier `TORT`, format version 1):
//!
//! ```text
//! table Parameter { name:string; dims:[int64]; data_type:TensorDataType; raw_data:[uint8]; }
//! table Adapter   { format_version:int; adapter_version:int; model_version:int; parameters:[Parameter]; }
//! ```
//!
//! The schema is four fields deep, so rather than take a flatbuffers dependency this
//! module carries a minimal back-to-front builder that follows the reference C++
//! `FlatBufferBuilder` step for step (pre-alignment, defaults left out, vtable
//! de-duplication, field order of the generated `CreateParameter`/`CreateAdapter`).
//! The output is therefore byte-identical to what ONNX Runtime itself writes for the
//! same parameters, which the tests check against the Python writer when it is present.

/// The adapter format version this module writes (ONNX Runtime's `kAdapterFormatVersion`).
pub const ADAPTER_FORMAT_VERSION: i32 = 1;
/// The FlatBuffers file identifier of an ONNX Runtime adapter.
pub const ADAPTER_FILE_IDENTIFIER: &[u8; 4] = b"TORT";
/// `TensorDataType::FLOAT` in the adapter schema (the ONNX `TensorProto.FLOAT` code).
const DATA_TYPE_FLOAT: i32 = 1;

/// Serializes f32 tensors as an ONNX Runtime adapter (`.onnx_adapter`) file.
///
/// Each parameter is `(name, dims, values)`, values in row-major order; its name is the
/// model input it overrides when the adapter is active. The versions are free-form
/// metadata ONNX Runtime stores but does not interpret.
///
/// # Panics
///
/// If a parameter's value count is not the product of its dims (ONNX Runtime does not
/// check this on load and would read past the tensor), or if the file would exceed the
/// FlatBuffers limit of 2 GiB.
pub fn write_onnx_adapter(
    params: &[(String, Vec<usize>, &[f32])],
    adapter_version: i32,
    model_version: i32,
) -> Vec<u8> {
    let mut b = Builder::default();
    let mut offsets = Vec::with_capacity(params.len());
    for (name, dims, values) in params {
        let count = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        assert!(count == Some(values.len()), "adapter parameter `{name}`: {} values for dims {dims:?}", values.len());
        // As ONNX Runtime's `SaveLoraParameter`: name, dims, data, then the table.
        let name_off = (!name.is_empty()).then(|| b.string(name.as_bytes()));
        let dims: Vec<u8> = dims.iter().flat_map(|&d| (d as i64).to_le_bytes()).collect();
        let dims_off = b.vector(&dims, 8, 8);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let raw_off = b.vector(&raw, 1, 1);
        // The generated `CreateParameter` adds the fields last to first (all are 4 bytes).
        let start = b.start_table();
        b.add_offset(3, Some(raw_off));
        b.add_i32(2, DATA_TYPE_FLOAT);
        b.add_offset(1, Some(dims_off));
        b.add_offset(0, name_off);
        offsets.push(b.end_table(start));
    }
    let params_off = b.offset_vector(&offsets);
    let start = b.start_table();
    b.add_offset(3, Some(params_off));
    b.add_i32(2, model_version);
    b.add_i32(1, adapter_version);
    b.add_i32(0, ADAPTER_FORMAT_VERSION);
    let root = b.end_table(start);
    b.finish(root, ADAPTER_FILE_IDENTIFIER)
}

/// A minimal FlatBuffers builder: the buffer grows from the end towards the front, and
/// every offset is measured from the end ("`GetSize()`" in the C++ builder), so the
/// `buf` vector here holds the finished bytes *reversed*. Positions and alignment match
/// the C++ `FlatBufferBuilder` (whose `force_defaults` is off and `dedup_vtables` on).
#[derive(Default)]
struct Builder {
    /// The bytes written so far, last byte of the file first.
    buf: Vec<u8>,
    /// The largest alignment any element needed: the whole buffer is padded to it.
    min_align: usize,
    /// Fields of the open table: (vtable slot offset, position of the field).
    fields: Vec<(u16, u32)>,
    /// Every vtable written, by position.
    vtables: Vec<u32>,
}

impl Builder {
    /// `GetSize()`: bytes written so far, i.e. the offset-from-end of the front.
    fn size(&self) -> u32 {
        assert!(self.buf.len() <= i32::MAX as usize, "an ONNX Runtime adapter is limited to 2 GiB");
        self.buf.len() as u32
    }

    /// Prepends `bytes` (in file order).
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes.iter().rev());
    }

    fn pad(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }

    /// Padding that makes `size` a multiple of `align` (a power of two).
    fn padding(size: usize, align: usize) -> usize {
        size.wrapping_neg() & (align - 1)
    }

    /// `Align`: pads so the front is `align`-aligned.
    fn align(&mut self, align: usize) {
        self.min_align = self.min_align.max(align);
        self.pad(Self::padding(self.buf.len(), align));
    }

    /// `PreAlign`: pads so that after `len` more bytes the front is `align`-aligned.
    fn pre_align(&mut self, len: usize, align: usize) {
        if len == 0 {
            return;
        }
        self.min_align = self.min_align.max(align);
        self.pad(Self::padding(self.buf.len() + len, align));
    }

    fn push_u32(&mut self, v: u32) -> u32 {
        self.align(4);
        self.push(&v.to_le_bytes());
        self.size()
    }

    /// `ReferTo`: the uoffset from the next 4-byte slot to the object at `off`.
    fn refer_to(&mut self, off: u32) -> u32 {
        self.align(4);
        self.size() - off + 4
    }

    fn string(&mut self, s: &[u8]) -> u32 {
        self.pre_align(s.len() + 1, 4);
        self.pad(1); // NUL terminator
        self.push(s);
        self.push_u32(s.len() as u32)
    }

    /// A vector of `data.len() / elem` scalars of size `elem`, already little-endian.
    fn vector(&mut self, data: &[u8], elem: usize, align: usize) -> u32 {
        self.pre_align(data.len(), 4);
        self.pre_align(data.len(), align);
        self.push(data);
        self.push_u32((data.len() / elem) as u32)
    }

    fn offset_vector(&mut self, offsets: &[u32]) -> u32 {
        self.pre_align(offsets.len() * 4, 4);
        for &off in offsets.iter().rev() {
            let rel = self.refer_to(off);
            self.push_u32(rel);
        }
        self.push_u32(offsets.len() as u32)
    }

    fn start_table(&mut self) -> u32 {
        self.fields.clear();
        self.size()
    }

    /// Vtable slot of field `index`.
    fn slot(index: u16) -> u16 {
        4 + 2 * index
    }

    /// An int32 field; like the C++ builder, a default (0) value is left out.
    fn add_i32(&mut self, index: u16, v: i32) {
        if v != 0 {
            self.align(4);
            self.push(&v.to_le_bytes());
            let at = self.size();
            self.fields.push((Self::slot(index), at));
        }
    }

    fn add_offset(&mut self, index: u16, off: Option<u32>) {
        if let Some(off) = off {
            let rel = self.refer_to(off);
            let at = self.push_u32(rel);
            self.fields.push((Self::slot(index), at));
        }
    }

    fn end_table(&mut self, start: u32) -> u32 {
        // The table starts with the soffset to its vtable, patched below.
        let table = self.push_u32(0);
        let vt_len = self.fields.iter().map(|&(slot, _)| slot + 2).max().unwrap_or(0).max(4);
        let mut vtable = vec![0u8; vt_len as usize];
        vtable[0..2].copy_from_slice(&vt_len.to_le_bytes());
        vtable[2..4].copy_from_slice(&((table - start) as u16).to_le_bytes());
        for &(slot, at) in &self.fields {
            let s = slot as usize;
            vtable[s..s + 2].copy_from_slice(&((table - at) as u16).to_le_bytes());
        }
        self.fields.clear();
        // Reuse an identical vtable written earlier, else write this one.
        let existing = self.vtables.iter().copied().find(|&pos| self.file_order(pos, vt_len as usize) == vtable);
        let vt_pos = match existing {
            Some(pos) => pos,
            None => {
                self.push(&vtable);
                let pos = self.size();
                self.vtables.push(pos);
                pos
            }
        };
        // soffset: table address − vtable address, in file coordinates.
        let soffset = (vt_pos as i64 - table as i64) as i32;
        for (k, byte) in soffset.to_le_bytes().into_iter().enumerate() {
            // File byte k of the object at offset-from-end `table` (see `file_order`).
            self.buf[table as usize - 1 - k] = byte;
        }
        table
    }

    /// `len` bytes in file order starting at the object at offset-from-end `pos`.
    fn file_order(&self, pos: u32, len: usize) -> Vec<u8> {
        let first = pos as usize - 1;
        (0..len).map(|k| self.buf[first - k]).collect()
    }

    fn finish(mut self, root: u32, identifier: &[u8; 4]) -> Vec<u8> {
        let align = self.min_align.max(1);
        self.pre_align(4 + identifier.len(), align);
        self.push(identifier);
        let rel = self.refer_to(root);
        self.push_u32(rel);
        self.buf.reverse();
        self.buf
    }
}
