//! A GGUF reader over a memory map (versions 2 and 3).
//!
//! Every length, count and offset in the file is checked against the bytes that are actually
//! there before anything is allocated or read, so a truncated, corrupt or hostile file gives an
//! [`Error`] of kind `Gguf`, never a panic, an out-of-bounds read or a huge allocation.
//! Written by hand (rather than taken from a crate) because it is small, it is on the load path of
//! every model, and it must hold these guarantees.
//!
//! Layout: magic `GGUF`, version, tensor count, metadata count, metadata key/values, tensor
//! infos, padding to `general.alignment` (default 32), then the tensor data.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::dtype::GgmlType;
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;
const MAX_ARRAY_DEPTH: u32 = 4;

/// A metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 9: elements all of one type.
    Array(Vec<Value>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(b) => Some(b as u64),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if it is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short type name for messages and `model info`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }
}

impl fmt::Display for Value {
    /// Scalars print as themselves; arrays print their type and length plus the first few items.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::String(s) => {
                if s.chars().count() > 80 {
                    let head: String = s.chars().take(77).collect();
                    write!(f, "{head:?}...")
                } else {
                    write!(f, "{s:?}")
                }
            }
            Value::Array(a) => {
                let ty = a.first().map_or("?", Value::type_name);
                write!(f, "[{ty}; {}]", a.len())?;
                if !a.is_empty() {
                    let items: Vec<String> = a.iter().take(5).map(|v| v.to_string()).collect();
                    write!(
                        f,
                        " {}{}",
                        items.join(", "),
                        if a.len() > 5 { ", ..." } else { "" }
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Where one tensor's data lies and how it is typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as GGUF stores them.
    pub dims: Vec<u64>,
    /// Element type.
    pub dtype: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Elements per row (the innermost dimension).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }
    /// Number of rows (product of the outer dimensions).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file whose tensor data stays in the (memory-mapped) file.
pub struct GgufFile {
    bytes: Bytes,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// Byte alignment of tensor data.
    pub alignment: u64,
    data_start: usize,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path)
            .map_err(|e| Error::new(crate::ErrorKind::Io, format!("{}: {e}", path.display())))?;
        // Pages are read in at open (populate) so serving does not page-fault weights in
        // while it runs and RSS is flat from the start.
        // SAFETY: the map is read-only; the file is not expected to change while it is in use
        // (the same assumption llama.cpp makes). Every read is bounds-checked against its length.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| {
            Error::new(
                crate::ErrorKind::Io,
                format!("{}: mmap: {e}", path.display()),
            )
        })?;
        Self::parse_bytes(Bytes::Mapped(map))
            .map_err(|e| Error::new(e.kind, format!("{}: {}", path.display(), e.msg)))
    }

    /// Parses a GGUF image held in memory (tests, fuzzing).
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        Self::parse_bytes(Bytes::Owned(bytes))
    }

    fn parse_bytes(bytes: Bytes) -> Result<Self> {
        let buf = bytes.as_slice();
        let mut r = Reader { buf, pos: 0 };
        let magic = r
            .take(4)
            .map_err(|_| Error::gguf("file is shorter than the GGUF header"))?;
        if magic != MAGIC {
            return Err(Error::gguf(format!(
                "bad magic {magic:02x?}: not a GGUF file"
            )));
        }
        let version = r.u32()?;
        if version != 2 && version != 3 {
            return Err(Error::gguf(format!(
                "unsupported GGUF version {version} (2 and 3 are)"
            )));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        // Each metadata entry and each tensor info takes well over 8 bytes, so a count larger
        // than the remaining bytes / 8 cannot be honest.
        let plausible = (buf.len() as u64) / 8;
        if n_tensors > plausible || n_kv > plausible {
            return Err(Error::gguf(format!(
                "absurd counts: {n_tensors} tensors, {n_kv} metadata entries in a {}-byte file",
                buf.len()
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r
                .string()
                .map_err(|e| ctx(e, &format!("metadata entry {i}: key")))?;
            let ty = r.u32()?;
            let value = r
                .value(ty, 0)
                .map_err(|e| ctx(e, &format!("metadata {key:?}")))?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::gguf(format!("duplicate metadata key {key:?}")));
            }
            metadata.push((key, value));
        }
        let alignment = match index.get("general.alignment") {
            Some(&i) => {
                let a = metadata[i].1.as_u64().unwrap_or(0);
                if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
                    return Err(Error::gguf(format!(
                        "invalid general.alignment {}",
                        metadata[i].1
                    )));
                }
                a
            }
            None => DEFAULT_ALIGNMENT,
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let t = r
                .tensor_info()
                .map_err(|e| ctx(e, &format!("tensor info {i}")))?;
            if t.offset % alignment != 0 {
                return Err(Error::gguf(format!(
                    "tensor {:?}: offset {} is not aligned to {alignment}",
                    t.name, t.offset
                )));
            }
            if tensor_index.insert(t.name.clone(), tensors.len()).is_some() {
                return Err(Error::gguf(format!("duplicate tensor name {:?}", t.name)));
            }
            tensors.push(t);
        }
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let data_len = (buf.len() as u64).saturating_sub(data_start);
        for t in &tensors {
            let end = t
                .offset
                .checked_add(t.size)
                .ok_or_else(|| Error::gguf("tensor offset overflows"))?;
            if end > data_len {
                return Err(Error::gguf(format!(
                    "tensor {:?} ends at byte {} of the data section, past the end of the file ({data_len} bytes of data): truncated file?",
                    t.name, end
                )));
            }
        }
        Ok(GgufFile {
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            alignment,
            data_start: data_start as usize,
            bytes,
        })
    }

    /// Total file size in bytes.
    pub fn file_size(&self) -> usize {
        self.bytes.as_slice().len()
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A required unsigned integer, with a clear error when missing or mistyped.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.require(key)?
            .as_u64()
            .ok_or_else(|| type_err(key, "an unsigned integer"))
    }

    /// A required number as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.require(key)?
            .as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| type_err(key, "a number"))
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.require(key)?
            .as_str()
            .ok_or_else(|| type_err(key, "a string"))
    }

    /// A required array.
    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        self.require(key)?
            .as_array()
            .ok_or_else(|| type_err(key, "an array"))
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| Error::gguf(format!("missing metadata key {key:?}")))
    }

    /// A tensor's info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes (bounds were checked at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_start + t.offset as usize;
        &self.bytes.as_slice()[start..start + t.size as usize]
    }
}

fn ctx(e: Error, what: &str) -> Error {
    Error::new(e.kind, format!("{what}: {}", e.msg))
}

fn type_err(key: &str, want: &str) -> Error {
    Error::gguf(format!("metadata {key:?} is not {want}"))
}

/// A bounds-checked cursor: every read returns an error instead of running off the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::gguf(format!(
                "unexpected end of file at byte {} (wanted {n} more bytes): truncated file?",
                self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        if len > self.remaining() as u64 {
            return Err(Error::gguf(format!(
                "string of {len} bytes runs past the end of the file"
            )));
        }
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::gguf("string is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::gguf(format!("bool value {b} is neither 0 nor 1"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::gguf("arrays nested too deeply"));
                }
                let elem_ty = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte (strings take eight).
                if n > self.remaining() as u64 {
                    return Err(Error::gguf(format!(
                        "array of {n} elements runs past the end of the file"
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(Error::gguf(format!("unknown metadata value type {other}"))),
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::gguf(format!(
                "tensor {name:?} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64()?);
        }
        let dtype =
            GgmlType::from_u32(self.u32()?).map_err(|e| ctx(e, &format!("tensor {name:?}")))?;
        let offset = self.u64()?;
        let mut n_rows: u64 = 1;
        for &d in &dims[1..] {
            n_rows = n_rows
                .checked_mul(d)
                .ok_or_else(|| Error::gguf(format!("tensor {name:?}: dimensions overflow")))?;
        }
        let size = dtype
            .row_bytes(dims[0])
            .and_then(|rb| {
                rb.checked_mul(n_rows)
                    .ok_or_else(|| Error::gguf("tensor size overflows"))
            })
            .map_err(|e| ctx(e, &format!("tensor {name:?}")))?;
        Ok(TensorInfo {
            name,
            dims,
            dtype,
            offset,
            size,
        })
    }
}

/// Writes GGUF images, for tests and tools that need a small synthetic model file.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor with raw data already in `dtype`'s layout.
    pub fn tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        dtype: GgmlType,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), dtype, data));
        self
    }

    /// Serializes to GGUF version 3 bytes with 32-byte alignment.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            write_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, dtype, data) in &self.tensors {
            write_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(*dtype as u32).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        let start = out.len().div_ceil(DEFAULT_ALIGNMENT as usize) * DEFAULT_ALIGNMENT as usize;
        out.resize(start, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(start + off as usize, 0);
            out.extend_from_slice(data);
        }
        let end = out.len().div_ceil(DEFAULT_ALIGNMENT as usize) * DEFAULT_ALIGNMENT as usize;
        out.resize(end, 0);
        out
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            let ty = items.first().map_or(0, value_type);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                write_value(out, it);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests;
