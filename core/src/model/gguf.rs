//! Opening GGUF files with typed errors, and reading their metadata.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, Value};

use super::ModelError;

/// An open GGUF file: its parsed header and a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Opens `path`, checks the magic bytes, parses the header and checks that
    /// every tensor's data lies inside the file.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 4];
        let read = read_up_to(&mut reader, &mut magic).map_err(|e| ModelError::io(path, e))?;
        if read < 4 || &magic != b"GGUF" {
            return Err(ModelError::NotGguf { path: path.into(), found: magic[..read].to_vec() });
        }
        reader.rewind().map_err(|e| ModelError::io(path, e))?;
        // candle's parser is bounds-checked, but a corrupt header could still trip an
        // arithmetic assertion (e.g. a zero alignment): never let that become a panic.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)));
        let content = match parsed {
            Ok(Ok(content)) => content,
            Ok(Err(e)) => return Err(header_error(path, e)),
            Err(_) => return Err(ModelError::invalid(path, "corrupt GGUF header")),
        };
        let gguf = Self { path: path.into(), content, reader };
        gguf.check_tensor_extents(file_len)?;
        Ok(gguf)
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header (metadata and tensor directory).
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// Whether the file holds a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads the tensor `name` into memory.
    pub fn tensor(&mut self, name: &str) -> Result<QTensor, ModelError> {
        if !self.has_tensor(name) {
            return Err(ModelError::invalid(&self.path, format!("missing tensor {name}")));
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| ModelError::invalid(&self.path, format!("tensor {name}: {e}")))
    }

    /// The metadata value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A required string value.
    pub fn string(&self, key: &str) -> Result<&str, ModelError> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.wrong_type(key, "a string")),
            None => Err(self.missing(key)),
        }
    }

    /// A required unsigned integer value (any integer width).
    pub fn usize(&self, key: &str) -> Result<usize, ModelError> {
        let value = self.get(key).ok_or_else(|| self.missing(key))?;
        let n = match value {
            Value::U8(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| self.wrong_type(key, "a non-negative integer"))
    }

    /// A required floating-point value.
    pub fn f32(&self, key: &str) -> Result<f32, ModelError> {
        match self.get(key) {
            Some(Value::F32(v)) => Ok(*v),
            Some(Value::F64(v)) => Ok(*v as f32),
            Some(_) => Err(self.wrong_type(key, "a float")),
            None => Err(self.missing(key)),
        }
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::invalid(&self.path, format!("missing metadata {key}"))
    }

    fn wrong_type(&self, key: &str, expected: &str) -> ModelError {
        ModelError::invalid(&self.path, format!("metadata {key} is not {expected}"))
    }

    fn check_tensor_extents(&self, file_len: u64) -> Result<(), ModelError> {
        for (name, info) in &self.content.tensor_infos {
            let elems = info.shape.dims().iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let block = info.ggml_dtype.block_size() as u64;
            let bytes = elems
                .filter(|e| e % block == 0)
                .and_then(|e| (e / block).checked_mul(info.ggml_dtype.type_size() as u64))
                .ok_or_else(|| {
                    ModelError::invalid(&self.path, format!("tensor {name} has an impossible shape {:?}", info.shape))
                })?;
            let end = self.content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
            if end > file_len {
                return Err(ModelError::Truncated {
                    path: self.path.clone(),
                    detail: format!("tensor {name} ends at byte {end} but the file has {file_len} bytes"),
                });
            }
        }
        Ok(())
    }
}

/// Reads as many bytes as are available, up to `buf.len()`.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Classifies a header parse failure: running out of bytes means truncation.
fn header_error(path: &Path, e: candle_core::Error) -> ModelError {
    let message = e.to_string();
    let eof = message.contains("failed to fill whole buffer")
        || message.contains("remaining")
        || matches!(&e, candle_core::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
    if eof {
        ModelError::Truncated { path: path.into(), detail: format!("header: {message}") }
    } else {
        ModelError::invalid(path, format!("GGUF header: {message}"))
    }
}
