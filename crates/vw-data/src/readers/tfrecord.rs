//! TFRecord framing: `u64 length | u32 masked_crc32c(length) | data | u32 masked_crc32c(data)`,
//! all little-endian. Every record's two CRCs are checked; a corrupt length cannot make us allocate
//! more than [`MAX_RECORD`] bytes.

use crate::{Error, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Largest record we accept (an Open-X episode with encoded images is tens of MB).
pub const MAX_RECORD: u64 = 1 << 30;

/// TensorFlow's CRC mask: rotate right by 15 and add a constant, so CRCs of CRCs stay well-mixed.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Streams the records of one TFRecord file or byte stream.
pub struct TfRecordReader<R> {
    reader: R,
    what: String,
    index: usize,
    offset: u64,
    done: bool,
}

impl TfRecordReader<std::io::BufReader<std::fs::File>> {
    /// Opens a TFRecord file.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::new(std::io::BufReader::new(f), &path.display().to_string()))
    }
}

impl<R: Read> TfRecordReader<R> {
    /// Wraps a byte stream; `what` names it in errors.
    pub fn new(reader: R, what: &str) -> Self {
        Self { reader, what: what.to_string(), index: 0, offset: 0, done: false }
    }

    fn err(&self, detail: impl std::fmt::Display) -> Error {
        Error::malformed(format!("{} (record {} at byte {})", self.what, self.index, self.offset), detail)
    }

    /// Reads the next header; `Ok(None)` at a clean end of stream.
    fn read_header(&mut self) -> Result<Option<u64>> {
        let mut header = [0u8; 12];
        let mut got = 0;
        while got < 12 {
            let n = self.reader.read(&mut header[got..]).map_err(|e| self.err(e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            return Ok(None);
        }
        if got < 12 {
            return Err(self.err(format!("truncated header ({got} of 12 bytes)")));
        }
        let len = u64::from_le_bytes(header[..8].try_into().map_err(|_| self.err("header"))?);
        let crc = u32::from_le_bytes(header[8..].try_into().map_err(|_| self.err("header"))?);
        if masked_crc(&header[..8]) != crc {
            return Err(self.err("length CRC mismatch"));
        }
        if len > MAX_RECORD {
            return Err(self.err(format!("record length {len} exceeds the {MAX_RECORD}-byte limit")));
        }
        Ok(Some(len))
    }

    /// Reads the next record's payload, checking both CRCs; `Ok(None)` at end of stream.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let Some(len) = self.read_header()? else {
            self.done = true;
            return Ok(None);
        };
        let mut data = Vec::new();
        let read = (&mut self.reader).take(len).read_to_end(&mut data);
        let read = read.map_err(|e| self.err(e))?;
        if (read as u64) < len {
            return Err(self.err(format!("truncated data ({read} of {len} bytes)")));
        }
        let mut crc = [0u8; 4];
        self.reader.read_exact(&mut crc).map_err(|_| self.err("truncated data CRC"))?;
        if masked_crc(&data) != u32::from_le_bytes(crc) {
            return Err(self.err("data CRC mismatch"));
        }
        self.index += 1;
        self.offset += 16 + len;
        Ok(Some(data))
    }
}

impl<R: Read> Iterator for TfRecordReader<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                // Framing is lost after an error: stop rather than yield garbage.
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Where each record of a file starts and how long it is, found by reading headers only.
pub fn index_records(path: &Path) -> Result<Vec<(u64, u64)>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = TfRecordReader::new(std::io::BufReader::new(f), &path.display().to_string());
    let mut out = Vec::new();
    let mut pos = 0u64;
    while let Some(len) = r.read_header()? {
        if pos + 16 + len > file_len {
            return Err(r.err(format!("truncated data: record of {len} bytes runs past the end of the file")));
        }
        out.push((pos, len));
        pos += 16 + len;
        r.reader.seek(SeekFrom::Start(pos)).map_err(|e| Error::io(path, e))?;
        r.index += 1;
        r.offset = pos;
    }
    Ok(out)
}

/// Reads and checks the record at `offset` (from [`index_records`]).
pub fn read_record_at(path: &Path, offset: u64) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(path, e))?;
    let mut r = TfRecordReader::new(std::io::BufReader::new(f), &path.display().to_string());
    r.offset = offset;
    r.next_record()?.ok_or_else(|| Error::malformed(path.display(), format!("no record at byte {offset}")))
}

/// Appends one framed record to `w` (tests, tools, and converters that write TFRecords).
pub fn write_record(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    w.write_all(&len)?;
    w.write_all(&masked_crc(&len).to_le_bytes())?;
    w.write_all(data)?;
    w.write_all(&masked_crc(data).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_records() -> Vec<u8> {
        let mut buf = Vec::new();
        write_record(&mut buf, b"hello").unwrap();
        write_record(&mut buf, &[7u8; 300]).unwrap();
        buf
    }

    #[test]
    fn known_masked_crc() {
        // crc32c("123456789") = 0xE3069283 (the standard check value); masked per TensorFlow.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn reads_back_records() {
        let recs: Vec<_> = TfRecordReader::new(&two_records()[..], "mem").collect::<Result<_>>().unwrap();
        assert_eq!(recs, vec![b"hello".to_vec(), vec![7u8; 300]]);
    }

    #[test]
    fn index_and_random_access() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tfrecord");
        std::fs::write(&p, two_records()).unwrap();
        let idx = index_records(&p).unwrap();
        assert_eq!(idx, vec![(0, 5), (21, 300)]);
        assert_eq!(read_record_at(&p, 21).unwrap(), vec![7u8; 300]);
        std::fs::write(&p, &two_records()[..100]).unwrap();
        let err = index_records(&p).unwrap_err().to_string();
        assert!(err.contains("record 1") && err.contains("truncated"), "{err}");
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let good = two_records();
        // Flip a payload byte: data CRC.
        let mut bad = good.clone();
        bad[13] ^= 1;
        let err = TfRecordReader::new(&bad[..], "mem").next().unwrap().unwrap_err().to_string();
        assert!(err.contains("data CRC mismatch"), "{err}");
        // Flip a length byte: length CRC.
        let mut bad = good.clone();
        bad[0] ^= 1;
        let err = TfRecordReader::new(&bad[..], "mem").next().unwrap().unwrap_err().to_string();
        assert!(err.contains("length CRC mismatch"), "{err}");
        // Truncations anywhere in the second record.
        for cut in [22, 30, 200, good.len() - 2] {
            let results: Vec<_> = TfRecordReader::new(&good[..cut], "mem").collect();
            assert_eq!(results.len(), 2, "cut {cut}");
            assert!(results[0].is_ok() && results[1].is_err(), "cut {cut}");
        }
        // A huge length with a valid length CRC is refused before allocating.
        let mut huge = Vec::new();
        let len = (MAX_RECORD + 1).to_le_bytes();
        huge.extend_from_slice(&len);
        huge.extend_from_slice(&masked_crc(&len).to_le_bytes());
        let err = TfRecordReader::new(&huge[..], "mem").next().unwrap().unwrap_err().to_string();
        assert!(err.contains("exceeds"), "{err}");
    }
}
