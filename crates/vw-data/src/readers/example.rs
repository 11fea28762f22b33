//! `tf.train.Example` protobuf, decoded by hand (no protoc at build time).
//!
//! ```text
//! Example   { Features features = 1; }
//! Features  { map<string, Feature> feature = 1; }          // map entry: key = 1, value = 2
//! Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
//! BytesList { repeated bytes value = 1; }
//! FloatList { repeated float value = 1 [packed]; }           // parsers must also accept unpacked
//! Int64List { repeated int64 value = 1 [packed]; }
//! ```
//! Unknown fields are skipped, as protobuf requires.

use crate::{Error, Result};
use std::collections::BTreeMap;

/// One feature's values.
#[derive(Clone, Debug, PartialEq)]
pub enum Feature {
    /// `bytes_list` (encoded images, strings).
    Bytes(Vec<Vec<u8>>),
    /// `float_list`.
    Float(Vec<f32>),
    /// `int64_list`.
    Int64(Vec<i64>),
}

impl Feature {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Feature::Bytes(v) => v.len(),
            Feature::Float(v) => v.len(),
            Feature::Int64(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kind name used in error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Feature::Bytes(_) => "bytes_list",
            Feature::Float(_) => "float_list",
            Feature::Int64(_) => "int64_list",
        }
    }
}

/// A parsed `tf.train.Example`: feature name → values.
pub type Example = BTreeMap<String, Feature>;

struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let len = self.varint()?;
        let end = usize::try_from(len).ok().and_then(|l| self.pos.checked_add(l)).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("length-delimited field of {len} bytes runs past the end"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed32(&mut self) -> std::result::Result<[u8; 4], String> {
        let s = self.buf.get(self.pos..self.pos + 4).ok_or("truncated fixed32")?;
        self.pos += 4;
        Ok([s[0], s[1], s[2], s[3]])
    }

    /// Returns (field number, wire type).
    fn tag(&mut self) -> std::result::Result<(u64, u8), String> {
        let t = self.varint()?;
        Ok((t >> 3, (t & 7) as u8))
    }

    fn skip(&mut self, wire_type: u8) -> std::result::Result<(), String> {
        match wire_type {
            0 => self.varint().map(|_| ()),
            1 => {
                self.pos = self.pos.checked_add(8).filter(|&p| p <= self.buf.len()).ok_or("truncated fixed64")?;
                Ok(())
            }
            2 => self.bytes().map(|_| ()),
            5 => self.fixed32().map(|_| ()),
            t => Err(format!("unsupported wire type {t}")),
        }
    }
}

/// Parses a serialized `tf.train.Example`; `what` names it in errors.
pub fn parse_example(bytes: &[u8], what: &str) -> Result<Example> {
    parse_example_inner(bytes).map_err(|e| Error::malformed(what, format!("tf.train.Example: {e}")))
}

fn parse_example_inner(bytes: &[u8]) -> std::result::Result<Example, String> {
    let mut out = Example::new();
    let mut w = Wire::new(bytes);
    while !w.done() {
        match w.tag()? {
            (1, 2) => {
                let mut features = Wire::new(w.bytes()?);
                while !features.done() {
                    match features.tag()? {
                        (1, 2) => {
                            let (k, v) = parse_map_entry(features.bytes()?)?;
                            out.insert(k, v);
                        }
                        (_, t) => features.skip(t)?,
                    }
                }
            }
            (_, t) => w.skip(t)?,
        }
    }
    Ok(out)
}

fn parse_map_entry(bytes: &[u8]) -> std::result::Result<(String, Feature), String> {
    let mut w = Wire::new(bytes);
    let mut key = String::new();
    // A map entry without a value holds the default (an empty Feature): treat it as empty bytes.
    let mut value = Feature::Bytes(Vec::new());
    while !w.done() {
        match w.tag()? {
            (1, 2) => key = String::from_utf8(w.bytes()?.to_vec()).map_err(|_| "feature name is not UTF-8")?,
            (2, 2) => value = parse_feature(w.bytes()?)?,
            (_, t) => w.skip(t)?,
        }
    }
    Ok((key, value))
}

fn parse_feature(bytes: &[u8]) -> std::result::Result<Feature, String> {
    let mut w = Wire::new(bytes);
    let mut value = Feature::Bytes(Vec::new());
    while !w.done() {
        let (field, wt) = w.tag()?;
        if wt != 2 || !(1..=3).contains(&field) {
            w.skip(wt)?;
            continue;
        }
        let mut list = Wire::new(w.bytes()?);
        value = match field {
            1 => {
                let mut v = Vec::new();
                while !list.done() {
                    match list.tag()? {
                        (1, 2) => v.push(list.bytes()?.to_vec()),
                        (_, t) => list.skip(t)?,
                    }
                }
                Feature::Bytes(v)
            }
            2 => {
                let mut v = Vec::new();
                while !list.done() {
                    match list.tag()? {
                        (1, 2) => {
                            let packed = list.bytes()?;
                            if !packed.len().is_multiple_of(4) {
                                return Err(format!("packed float list of {} bytes", packed.len()));
                            }
                            v.extend(packed.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                        }
                        (1, 5) => v.push(f32::from_le_bytes(list.fixed32()?)),
                        (_, t) => list.skip(t)?,
                    }
                }
                Feature::Float(v)
            }
            _ => {
                let mut v = Vec::new();
                while !list.done() {
                    match list.tag()? {
                        (1, 2) => {
                            let mut packed = Wire::new(list.bytes()?);
                            while !packed.done() {
                                v.push(packed.varint()? as i64);
                            }
                        }
                        (1, 0) => v.push(list.varint()? as i64),
                        (_, t) => list.skip(t)?,
                    }
                }
                Feature::Int64(v)
            }
        };
    }
    Ok(value)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Serializes an Example (packed lists, as TensorFlow writes); used by tests and converters.
pub fn encode_example(example: &Example) -> Vec<u8> {
    let mut features = Vec::new();
    for (key, value) in example {
        let mut list = Vec::new();
        let field = match value {
            Feature::Bytes(v) => {
                v.iter().for_each(|b| put_bytes(&mut list, 1, b));
                1
            }
            Feature::Float(v) => {
                let packed: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                put_bytes(&mut list, 1, &packed);
                2
            }
            Feature::Int64(v) => {
                let mut packed = Vec::new();
                v.iter().for_each(|&i| put_varint(&mut packed, i as u64));
                put_bytes(&mut list, 1, &packed);
                3
            }
        };
        let mut feature = Vec::new();
        put_bytes(&mut feature, field, &list);
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, key.as_bytes());
        put_bytes(&mut entry, 2, &feature);
        put_bytes(&mut features, 1, &entry);
    }
    let mut out = Vec::new();
    put_bytes(&mut out, 1, &features);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Example {
        let mut e = Example::new();
        e.insert("steps/action".into(), Feature::Float(vec![0.5, -1.25, 3.0]));
        e.insert("steps/is_first".into(), Feature::Int64(vec![1, 0, -3]));
        e.insert("steps/observation/image".into(), Feature::Bytes(vec![b"abc".to_vec(), vec![]]));
        e
    }

    #[test]
    fn roundtrip() {
        assert_eq!(parse_example(&encode_example(&sample()), "t").unwrap(), sample());
    }

    #[test]
    fn decodes_the_wire_bytes_tensorflow_writes() {
        // SerializeToString() of Example(features=Features(feature={"a": Feature(int64_list=Int64List(value=[1, 300]))})),
        // spelled out from the protobuf encoding rules (300 = varint ac 02).
        let bytes = [0x0a, 0x0e, 0x0a, 0x0c, 0x0a, 0x01, b'a', 0x12, 0x07, 0x1a, 0x05, 0x0a, 0x03, 0x01, 0xac, 0x02];
        assert_eq!(parse_example(&bytes, "t").unwrap()["a"], Feature::Int64(vec![1, 300]));
        assert_eq!(encode_example(&parse_example(&bytes, "t").unwrap()), bytes.to_vec());
    }

    #[test]
    fn unpacked_floats_and_unknown_fields() {
        // FloatList with two unpacked floats (tag 0x0d = field 1, wire type 5) and a trailing unknown varint.
        let mut list = vec![0x0d];
        list.extend_from_slice(&1.5f32.to_le_bytes());
        list.push(0x0d);
        list.extend_from_slice(&(-2.0f32).to_le_bytes());
        list.extend_from_slice(&[0x10, 0x05]);
        let mut feature = Vec::new();
        put_bytes(&mut feature, 2, &list);
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, b"f");
        put_bytes(&mut entry, 2, &feature);
        let mut features = Vec::new();
        put_bytes(&mut features, 1, &entry);
        let mut ex = Vec::new();
        put_bytes(&mut ex, 1, &features);
        put_varint(&mut ex, 9 << 3);
        put_varint(&mut ex, 12345);
        assert_eq!(parse_example(&ex, "t").unwrap()["f"], Feature::Float(vec![1.5, -2.0]));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode_example(&sample());
        for cut in 1..bytes.len() {
            assert!(parse_example(&bytes[..cut], "t").is_err(), "cut at {cut} parsed");
        }
    }
}
