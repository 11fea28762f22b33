//! NumPy `.npy` arrays and `.npz` archives (a zip of `.npy` members), parsed by hand.
//!
//! Supports format versions 1.0–3.0, C order, little- and big-endian numeric dtypes
//! (`b1 i1 u1 i2 u2 i4 u4 i8 u8 f2 f4 f8`). Object arrays (`|O`, pickled payloads) are returned as raw
//! bytes so [`crate::readers::pickle`] can try them; Fortran order and structured dtypes are rejected.

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Upper bound on the elements of one array, so a corrupt header cannot request terabytes.
const MAX_ELEMENTS: usize = 1 << 32;

/// The element type of an array, normalised to native endianness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// `b1`
    Bool,
    /// `i1`
    I8,
    /// `u1`
    U8,
    /// `i2`
    I16,
    /// `u2`
    U16,
    /// `i4`
    I32,
    /// `u4`
    U32,
    /// `i8`
    I64,
    /// `u8`
    U64,
    /// `f2`
    F16,
    /// `f4`
    F32,
    /// `f8`
    F64,
    /// `O`: a pickled Python object payload.
    Object,
}

impl DType {
    /// Bytes per element (0 for objects, whose payload has no fixed size).
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 | DType::F16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
            DType::Object => 0,
        }
    }

    fn parse(descr: &str) -> std::result::Result<(DType, bool), String> {
        // First char is the byte order: '<' little, '>' big, '|' not applicable, '=' native.
        let (order, code) = match descr.chars().next() {
            Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
            _ => ('=', descr),
        };
        let big = order == '>' || (order == '=' && cfg!(target_endian = "big"));
        let dt = match code {
            "b1" | "?" => DType::Bool,
            "i1" => DType::I8,
            "u1" => DType::U8,
            "i2" => DType::I16,
            "u2" => DType::U16,
            "i4" => DType::I32,
            "u4" => DType::U32,
            "i8" => DType::I64,
            "u8" => DType::U64,
            "f2" => DType::F16,
            "f4" => DType::F32,
            "f8" => DType::F64,
            "O" => DType::Object,
            other => return Err(format!("unsupported dtype descr `{other}`")),
        };
        Ok((dt, big))
    }
}

/// A parsed array: shape, dtype and little-endian-normalised raw element bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Dimensions, C order; empty for a 0-d array.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Raw element bytes in native (little-endian) order; for `Object`, the pickle payload.
    pub data: Vec<u8>,
}

impl NpyArray {
    /// Number of elements (product of the shape).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as `u8`, only for `u1`/`b1` arrays (image data must not be silently cast).
    pub fn as_u8(&self) -> Option<&[u8]> {
        matches!(self.dtype, DType::U8 | DType::Bool).then_some(&self.data[..])
    }

    /// The elements converted to `f32` (any numeric dtype); `None` for object arrays.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let d = &self.data;
        let v = match self.dtype {
            DType::Object => return None,
            DType::Bool | DType::U8 => d.iter().map(|&x| x as f32).collect(),
            DType::I8 => d.iter().map(|&x| x as i8 as f32).collect(),
            DType::I16 => d.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(),
            DType::U16 => d.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as f32).collect(),
            DType::F16 => d.chunks_exact(2).map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            DType::I32 => {
                d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f32).collect()
            }
            DType::U32 => {
                d.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f32).collect()
            }
            DType::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))).collect(),
            DType::I64 => {
                d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
            }
            DType::U64 => {
                d.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
            }
            DType::F64 => {
                d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
            }
        };
        Some(v)
    }

    /// The elements as `i64`, only for integer dtypes (indices must not come from floats).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let d = &self.data;
        let v = match self.dtype {
            DType::Bool | DType::U8 => d.iter().map(|&x| x as i64).collect(),
            DType::I8 => d.iter().map(|&x| x as i8 as i64).collect(),
            DType::I16 => d.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            DType::U16 => d.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            DType::I32 => {
                d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64).collect()
            }
            DType::U32 => {
                d.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64).collect()
            }
            DType::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
            DType::U64 => {
                d.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as i64).collect()
            }
            _ => return None,
        };
        Some(v)
    }

    /// Serialises as a version 1.0 `.npy` file (little-endian, C order); used by tests and tools.
    pub fn to_npy_bytes(&self) -> Vec<u8> {
        let code = match self.dtype {
            DType::Bool => "|b1",
            DType::I8 => "|i1",
            DType::U8 => "|u1",
            DType::I16 => "<i2",
            DType::U16 => "<u2",
            DType::I32 => "<i4",
            DType::U32 => "<u4",
            DType::I64 => "<i8",
            DType::U64 => "<u8",
            DType::F16 => "<f2",
            DType::F32 => "<f4",
            DType::F64 => "<f8",
            DType::Object => "|O",
        };
        let shape = match self.shape.len() {
            0 => "()".to_string(),
            1 => format!("({},)", self.shape[0]),
            _ => format!("({})", self.shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let mut header = format!("{{'descr': '{code}', 'fortran_order': False, 'shape': {shape}, }}");
        // Pad so that data starts on a 64-byte boundary, as numpy does.
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 => {
            if frac == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Parses one `.npy` file from memory; `what` names it in errors.
pub fn parse_npy(bytes: &[u8], what: &str) -> Result<NpyArray> {
    parse_npy_inner(bytes).map_err(|e| Error::malformed(what, e))
}

fn parse_npy_inner(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file (bad magic)".into());
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or("truncated header length")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes.get(start..start.saturating_add(header_len)).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not UTF-8")?;
    let descr = dict_value(header, "descr").ok_or("header lacks 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or("header lacks 'fortran_order'")?;
    let shape_s = dict_value(header, "shape").ok_or("header lacks 'shape'")?;
    if fortran != "False" {
        return Err("Fortran-order arrays are not supported".into());
    }
    let (dtype, big) = DType::parse(descr)?;
    let inner = shape_s.trim().strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or("shape is not a tuple")?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(part.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad shape entry `{part}`"))?);
    }
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS);
    let n = n.ok_or_else(|| format!("shape {shape:?} is too large"))?;
    let body = &bytes[start + header_len..];
    if dtype == DType::Object {
        return Ok(NpyArray { shape, dtype, data: body.to_vec() });
    }
    let size = dtype.size();
    let need = n * size;
    if body.len() < need {
        return Err(format!("truncated data: shape {shape:?} needs {need} bytes, file has {}", body.len()));
    }
    let mut data = body[..need].to_vec();
    if big && size > 1 {
        data.chunks_exact_mut(size).for_each(|c| c.reverse());
    }
    Ok(NpyArray { shape, dtype, data })
}

/// Value text of `key` in the Python dict literal of an .npy header (no nesting beyond the shape tuple).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_a = format!("'{key}':");
    let pat_b = format!("\"{key}\":");
    let pos = header.find(&pat_a).map(|p| p + pat_a.len()).or_else(|| header.find(&pat_b).map(|p| p + pat_b.len()))?;
    let rest = header[pos..].trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
    Some(rest[..end].trim())
}

/// Reads and parses one `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes, &path.display().to_string())
}

/// An opened `.npz` archive; members are parsed on demand.
pub struct Npz<R: std::io::Read + std::io::Seek> {
    zip: zip::ZipArchive<R>,
    what: String,
}

impl Npz<std::io::BufReader<std::fs::File>> {
    /// Opens an `.npz` file.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::new(std::io::BufReader::new(f), &path.display().to_string())
    }
}

impl<R: std::io::Read + std::io::Seek> Npz<R> {
    /// Wraps a reader of zip bytes; `what` names it in errors.
    pub fn new(reader: R, what: &str) -> Result<Self> {
        let zip =
            zip::ZipArchive::new(reader).map_err(|e| Error::malformed(what, format!("not a zip archive: {e}")))?;
        Ok(Self { zip, what: what.to_string() })
    }

    /// Array names (member names without `.npy`).
    pub fn keys(&self) -> Vec<String> {
        self.zip.file_names().map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string()).collect()
    }

    /// Parses the member `key` (with or without `.npy`).
    pub fn get(&mut self, key: &str) -> Result<NpyArray> {
        let name = if key.ends_with(".npy") { key.to_string() } else { format!("{key}.npy") };
        let what = format!("{}[{key}]", self.what);
        let mut member = match self.zip.by_name(&name) {
            Ok(m) => m,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(Error::MissingKey { what: self.what.clone(), key: key.to_string() })
            }
            Err(e) => return Err(Error::malformed(&what, e)),
        };
        // The declared size bounds the allocation; a lying header then fails the CRC or the read.
        let cap = (member.size() as usize).min(MAX_ELEMENTS);
        let mut bytes = Vec::with_capacity(cap.min(1 << 28));
        member.read_to_end(&mut bytes).map_err(|e| Error::malformed(&what, e))?;
        parse_npy(&bytes, &what)
    }
}

/// Parses every member of an in-memory `.npz` (used by the fuzz target and tests).
pub fn parse_npz(bytes: &[u8], what: &str) -> Result<BTreeMap<String, NpyArray>> {
    let mut npz = Npz::new(std::io::Cursor::new(bytes), what)?;
    let mut out = BTreeMap::new();
    for key in npz.keys() {
        let arr = npz.get(&key)?;
        out.insert(key, arr);
    }
    Ok(out)
}

/// Writes arrays as an uncompressed `.npz` (what `np.savez` produces); used by tests and tools.
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let ioerr = |e: std::io::Error| Error::io(path, e);
    for (name, arr) in arrays {
        zip.start_file(format!("{name}.npy"), opts).map_err(|e| Error::malformed(path.display(), e))?;
        std::io::Write::write_all(&mut zip, &arr.to_npy_bytes()).map_err(ioerr)?;
    }
    zip.finish().map_err(|e| Error::malformed(path.display(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr_f64(shape: Vec<usize>, vals: &[f64]) -> NpyArray {
        NpyArray { shape, dtype: DType::F64, data: vals.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    #[test]
    fn roundtrip_and_numpy_header() {
        let a = arr_f64(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        let bytes = a.to_npy_bytes();
        assert_eq!((10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64, 0);
        let b = parse_npy(&bytes, "t").unwrap();
        assert_eq!(b, a);
        assert_eq!(b.to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        assert_eq!(b.to_i64(), None);
    }

    #[test]
    fn parses_a_header_written_by_numpy() {
        // Exactly what numpy 1.26 writes for np.arange(3, dtype='>i4') (big-endian) in version 1.0.
        let header = "{'descr': '>i4', 'fortran_order': False, 'shape': (3,), }";
        let mut h = header.to_string();
        h.push_str(&" ".repeat(128 - 10 - header.len() - 1));
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        for v in [0i32, 1, 258] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let a = parse_npy(&bytes, "t").unwrap();
        assert_eq!(a.shape, vec![3]);
        assert_eq!(a.to_i64().unwrap(), vec![0, 1, 258]);
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x3555), 0.333_251_95);
    }

    #[test]
    fn malformed_npy_is_an_error() {
        let good = arr_f64(vec![4], &[1.0, 2.0, 3.0, 4.0]).to_npy_bytes();
        // Truncated data.
        let err = parse_npy(&good[..good.len() - 3], "x.npy").unwrap_err().to_string();
        assert!(err.contains("truncated data"), "{err}");
        // Truncated header.
        assert!(parse_npy(&good[..20], "x.npy").is_err());
        // Bad magic.
        assert!(parse_npy(b"PK\x03\x04 nonsense", "x.npy").is_err());
        // Unsupported dtype.
        let swap = |from: &str, to: &str| {
            let (f, t) = (from.as_bytes(), to.as_bytes());
            let at = good.windows(f.len()).position(|w| w == f).unwrap();
            [&good[..at], t, &good[at + f.len()..]].concat()
        };
        let bad = swap("<f8", "<c8");
        let err = parse_npy(&bad, "x.npy").unwrap_err().to_string();
        assert!(err.contains("unsupported dtype"), "{err}");
        // Huge shape.
        let bad = swap("(4,)", "(99999999999,99999999999)");
        let err = parse_npy(&bad, "x.npy").unwrap_err().to_string();
        assert!(err.contains("too large") || err.contains("truncated"), "{err}");
    }

    #[test]
    fn npz_roundtrip_and_missing_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npz");
        let img = NpyArray { shape: vec![2, 2, 3], dtype: DType::U8, data: (0..12).collect() };
        let act = arr_f64(vec![7], &[0.5; 7]);
        write_npz(&p, &[("rgb_static", &img), ("actions", &act)]).unwrap();
        let mut npz = Npz::open(&p).unwrap();
        let mut keys = npz.keys();
        keys.sort();
        assert_eq!(keys, vec!["actions", "rgb_static"]);
        assert_eq!(npz.get("rgb_static").unwrap().as_u8().unwrap(), &(0..12).collect::<Vec<u8>>()[..]);
        assert!(matches!(npz.get("robot_obs"), Err(Error::MissingKey { .. })));
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(parse_npz(&bytes, "a").unwrap().len(), 2);
        // Truncated archive: the central directory is at the end, so this fails at open.
        assert!(parse_npz(&bytes[..bytes.len() / 2], "a").is_err());
    }
}
