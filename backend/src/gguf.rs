//! Reading a GGUF file's header safely. candle's reader trusts the lengths it reads (a string
//! of 2^40 bytes is allocated before a byte is read), so a truncated or hostile file aborts the
//! process instead of failing to load. [`read_content`] first walks the header itself, checking
//! that every string, array and dimension count fits in the bytes that remain, that arrays
//! nest at most [`MAX_ARRAY_DEPTH`] deep and that `general.alignment` (which candle divides by)
//! is not zero, and only then hands the file to candle.
//!
//! Cost: the header's bytes read once into memory (up to [`HEADER_WINDOW`]), one pass over them
//! (metadata and tensor infos); the tensor data is never read here.

use crate::error::LoadError;
use candle_core::quantized::gguf_file;
use std::io::{Read, Seek, SeekFrom};

/// Arrays of arrays deeper than this are refused (real files nest none).
pub const MAX_ARRAY_DEPTH: usize = 4;
/// Most dimensions of one tensor (ggml's limit).
pub const MAX_DIMS: u32 = 4;

/// The header is parsed from memory: the file's first bytes, up to this many (real headers are a
/// few MB: Gemma 3's 262,144-token vocabulary makes 6.5 MB). Parsing straight from the file costs
/// a system call per value, seconds for a large vocabulary.
const HEADER_WINDOW: u64 = 32 << 20;

/// The key candle reads the tensor data's alignment from.
const ALIGNMENT: &str = "general.alignment";

/// Checks the header of the GGUF in `reader`, then reads it with candle. `name` names the
/// file in errors.
pub fn read_content<R: Read + Seek>(
    reader: &mut R,
    name: &str,
) -> Result<gguf_file::Content, LoadError> {
    read_with_window(reader, name, HEADER_WINDOW)
}

fn read_with_window<R: Read + Seek>(
    reader: &mut R,
    name: &str,
    window: u64,
) -> Result<gguf_file::Content, LoadError> {
    let io = |e| LoadError::io(name, e);
    let len = reader.seek(SeekFrom::End(0)).map_err(io)?;
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    let window = len.min(window);
    let mut head = Vec::with_capacity(window as usize);
    reader.take(window).read_to_end(&mut head).map_err(io)?;
    let mut head = std::io::Cursor::new(head);
    let invalid = |reason| LoadError::invalid(name, format!("not a valid GGUF file: {reason}"));
    match (Header {
        reader: &mut head,
        len,
    })
    .check()
    {
        Ok(()) => {
            head.set_position(0);
            Ok(gguf_file::Content::read(&mut head)?)
        }
        // A header longer than the window: from the file itself.
        Err(_) if window < len => {
            reader.seek(SeekFrom::Start(0)).map_err(io)?;
            Header { reader, len }.check().map_err(invalid)?;
            reader.seek(SeekFrom::Start(0)).map_err(io)?;
            Ok(gguf_file::Content::read(reader)?)
        }
        Err(reason) => Err(invalid(reason)),
    }
}

struct Header<'a, R> {
    reader: &'a mut R,
    len: u64,
}

impl<R: Read + Seek> Header<'_, R> {
    fn remaining(&mut self) -> Result<u64, String> {
        let pos = self.reader.stream_position().map_err(|e| e.to_string())?;
        Ok(self.len.saturating_sub(pos))
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.reader
            .read_exact(buf)
            .map_err(|_| "the header ends early".to_string())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.bytes().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.bytes().map(u64::from_le_bytes)
    }

    /// A length or count: 32 bits in version 1, 64 after.
    fn count(&mut self, v1: bool) -> Result<u64, String> {
        if v1 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }

    /// Skips `n` items of `size` bytes, refusing counts the file cannot hold.
    fn skip(&mut self, n: u64, size: u64, what: &str) -> Result<(), String> {
        let bytes = n
            .checked_mul(size)
            .filter(|&b| b <= self.remaining().unwrap_or(0))
            .ok_or_else(|| format!("{what} of {n} items does not fit in the file"))?;
        self.reader
            .seek(SeekFrom::Current(bytes as i64))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn string(&mut self, v1: bool) -> Result<(), String> {
        let n = self.count(v1)?;
        self.skip(n, 1, "a string")
    }

    /// Skips a key, saying whether it is `name` as candle reads it (trailing NUL bytes
    /// dropped).
    fn key_is(&mut self, v1: bool, name: &str) -> Result<bool, String> {
        let n = self.count(v1)?;
        if n < name.len() as u64 || n > self.remaining()? {
            self.skip(n, 1, "a string")?;
            return Ok(false);
        }
        let mut same = true;
        let mut left = n;
        let mut chunk = [0u8; 256];
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            self.fill(&mut chunk[..k])?;
            let at = (n - left) as usize;
            for (i, &b) in chunk[..k].iter().enumerate() {
                same &= name.as_bytes().get(at + i).map_or(b == 0, |&c| c == b);
            }
            left -= k as u64;
        }
        Ok(same)
    }

    /// candle aligns the tensor data to `general.alignment` when it is an integer of up to 32
    /// bits (a negative one meaning the default), and divides by it: zero is refused here.
    /// Leaves the reader where it was.
    fn nonzero_alignment(&mut self, ty: u32) -> Result<(), String> {
        let size = match ty {
            0 | 1 => 1,
            2 | 3 => 2,
            4 | 5 => 4,
            _ => return Ok(()),
        };
        let mut v = [0u8; 4];
        self.fill(&mut v[..size])?;
        self.reader
            .seek(SeekFrom::Current(-(size as i64)))
            .map_err(|e| e.to_string())?;
        match v == [0; 4] {
            true => Err(format!("{ALIGNMENT} is 0")),
            false => Ok(()),
        }
    }

    fn value(&mut self, ty: u32, v1: bool, depth: usize) -> Result<(), String> {
        match ty {
            0 | 1 | 7 => self.skip(1, 1, "a value"),
            2 | 3 => self.skip(1, 2, "a value"),
            4..=6 => self.skip(1, 4, "a value"),
            10..=12 => self.skip(1, 8, "a value"),
            8 => self.string(v1),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nest deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem = self.u32()?;
                let n = self.count(v1)?;
                // Every element takes at least one byte: a count past the file is a lie.
                if n > self.remaining()? {
                    return Err(format!("an array of {n} items does not fit in the file"));
                }
                for _ in 0..n {
                    self.value(elem, v1, depth + 1)?;
                }
                Ok(())
            }
            other => Err(format!("unknown value type {other}")),
        }
    }

    fn check(&mut self) -> Result<(), String> {
        let magic = self.u32()?;
        if magic != u32::from_le_bytes(*b"GGUF") {
            return Err("the magic number is not GGUF".into());
        }
        let version = self.u32()?;
        if !(1..=3).contains(&version) {
            return Err(format!("unsupported version {version}"));
        }
        let v1 = version == 1;
        let tensors = self.count(v1)?;
        let keys = self.count(v1)?;
        // A key is at least a length, a type and one byte of value.
        let least = if v1 { 9 } else { 13 };
        if keys.saturating_mul(least) > self.remaining()? {
            return Err(format!("{keys} metadata keys do not fit in the file"));
        }
        for _ in 0..keys {
            let alignment = self.key_is(v1, ALIGNMENT)?;
            let ty = self.u32()?;
            if alignment {
                self.nonzero_alignment(ty)?;
            }
            self.value(ty, v1, 0)?;
        }
        if tensors.saturating_mul(least) > self.remaining()? {
            return Err(format!("{tensors} tensors do not fit in the file"));
        }
        for _ in 0..tensors {
            self.string(v1)?;
            let dims = self.u32()?;
            if dims > MAX_DIMS {
                return Err(format!(
                    "a tensor has {dims} dimensions, more than {MAX_DIMS}"
                ));
            }
            self.skip(u64::from(dims), if v1 { 4 } else { 8 }, "a shape")?;
            self.skip(1, 12, "a tensor type and offset")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header(keys: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((keys.len() as u64).to_le_bytes());
        for (k, ty, v) in keys {
            b.extend((k.len() as u64).to_le_bytes());
            b.extend(k.as_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        b
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    #[test]
    fn a_sound_header_reads() {
        let bytes = header(&[("general.architecture", 8, string("llama"))]);
        let ct = read_content(&mut Cursor::new(bytes), "t.gguf").unwrap();
        assert_eq!(ct.metadata.len(), 1);
    }

    #[test]
    fn a_header_longer_than_the_window_is_read_from_the_file() {
        let bytes = header(&[("general.architecture", 8, string("llama"))]);
        for window in [0, 7, 30] {
            let ct = read_with_window(&mut Cursor::new(bytes.clone()), "t.gguf", window).unwrap();
            assert_eq!(ct.metadata.len(), 1);
        }
        let mut huge = (1u64 << 40).to_le_bytes().to_vec();
        huge.extend(b"abc");
        let bytes = header(&[("general.name", 8, huge)]);
        assert!(read_with_window(&mut Cursor::new(bytes), "t.gguf", 8).is_err());
    }

    #[test]
    fn lengths_past_the_end_are_refused_before_allocating() {
        let mut huge = (1u64 << 40).to_le_bytes().to_vec();
        huge.extend(b"abc");
        let bytes = header(&[("general.name", 8, huge)]);
        let err = read_content(&mut Cursor::new(bytes), "t.gguf").unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let mut array = 4u32.to_le_bytes().to_vec();
        array.extend(u64::MAX.to_le_bytes());
        let bytes = header(&[("tokenizer.ggml.scores", 9, array)]);
        assert!(read_content(&mut Cursor::new(bytes), "t.gguf").is_err());
    }

    #[test]
    fn a_zero_alignment_is_refused() {
        // candle divides by it (a fuzz finding: an abort).
        for (ty, v) in [(0u32, vec![0u8]), (3, vec![0, 0]), (4, vec![0, 0, 0, 0])] {
            let bytes = header(&[("general.alignment", ty, v)]);
            let err = read_content(&mut Cursor::new(bytes), "t.gguf").unwrap_err();
            assert!(err.to_string().contains("general.alignment is 0"), "{err}");
        }
        let bytes = header(&[("general.alignment", 4, 64u32.to_le_bytes().to_vec())]);
        assert!(read_content(&mut Cursor::new(bytes), "t.gguf").is_ok());
        // Another key with a zero value is fine.
        let bytes = header(&[("general.alignmenx", 4, vec![0; 4])]);
        assert!(read_content(&mut Cursor::new(bytes), "t.gguf").is_ok());
        // The key padded with NUL bytes, which candle drops (the second finding).
        let padded = format!("general.alignment{}", "\0".repeat(300));
        let bytes = header(&[(padded.as_str(), 4, vec![0; 4])]);
        assert!(read_content(&mut Cursor::new(bytes), "t.gguf").is_err());
    }

    #[test]
    fn truncated_and_foreign_files_are_load_errors() {
        let bytes = header(&[("general.architecture", 8, string("llama"))]);
        for cut in 0..bytes.len() {
            assert!(read_content(&mut Cursor::new(&bytes[..cut]), "t.gguf").is_err());
        }
        assert!(read_content(&mut Cursor::new(b"PK\x03\x04zip".to_vec()), "t.gguf").is_err());
    }
}
