//! A minimal protocol-buffers wire-format reader (no schema, no code generation), and the
//! CRC-32C (Castagnoli) checksum TensorFlow and LevelDB use. Shared by the TensorFlow
//! checkpoint ([`crate::tfckpt`]) and Caffe ([`crate::caffe`]) readers.
//!
//! Every length is checked against the bytes present before it is used; a malformed message
//! gives an error string (the caller adds the file and what it was reading), never a panic.

/// One field's value, as the wire format gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    pub fn varint(self, field: &str) -> Result<u64, String> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => Err(format!("field `{field}` is not a varint")),
        }
    }

    pub fn bytes(self, field: &str) -> Result<&'a [u8], String> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(format!("field `{field}` is not length-delimited")),
        }
    }

    pub fn fixed32(self, field: &str) -> Result<u32, String> {
        match self {
            Value::Fixed32(v) => Ok(v),
            _ => Err(format!("field `{field}` is not a fixed32")),
        }
    }

    /// A UTF-8 string field (invalid UTF-8 is replaced, as names only label things).
    pub fn string(self, field: &str) -> Result<String, String> {
        Ok(String::from_utf8_lossy(self.bytes(field)?).into_owned())
    }
}

/// Reads fields one after another from a message's bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The next `(field number, value)`, `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, String> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| format!("field number {} out of range", key >> 3))?;
        if field == 0 {
            return Err("field number 0".into());
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "short fixed64")?)),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| format!("length {len} out of range"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "short fixed32")?)),
            t => return Err(format!("unsupported wire type {t} (field {field})")),
        };
        Ok(Some((field, value)))
    }

    /// A base-128 varint of at most 10 bytes.
    pub fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err("message ends inside a varint".into());
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            format!("a field claims {n} bytes but only {} remain", self.buf.len() - self.pos)
        })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Appends the values of a repeated float field to `out`: packed (one length-delimited run of
/// little-endian f32) or not (one fixed32 per value).
pub(crate) fn push_floats(value: Value<'_>, out: &mut Vec<f32>, field: &str) -> Result<(), String> {
    match value {
        Value::Fixed32(bits) => out.push(f32::from_bits(bits)),
        Value::Bytes(b) => {
            if b.len() % 4 != 0 {
                return Err(format!("packed float field `{field}` is {} bytes, not a multiple of 4", b.len()));
            }
            out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        }
        _ => return Err(format!("field `{field}` is not a float")),
    }
    Ok(())
}

/// Appends the values of a repeated double field to `out` (as f32).
pub(crate) fn push_doubles(value: Value<'_>, out: &mut Vec<f32>, field: &str) -> Result<(), String> {
    match value {
        Value::Fixed64(bits) => out.push(f64::from_bits(bits) as f32),
        Value::Bytes(b) => {
            if b.len() % 8 != 0 {
                return Err(format!("packed double field `{field}` is {} bytes, not a multiple of 8", b.len()));
            }
            out.extend(b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32));
        }
        _ => return Err(format!("field `{field}` is not a double")),
    }
    Ok(())
}

/// Appends the values of a repeated integer (varint) field, packed or not.
pub(crate) fn push_varints(value: Value<'_>, out: &mut Vec<u64>, field: &str) -> Result<(), String> {
    match value {
        Value::Varint(v) => out.push(v),
        Value::Bytes(b) => {
            let mut r = Reader::new(b);
            while !r.at_end() {
                out.push(r.varint()?);
            }
        }
        _ => return Err(format!("field `{field}` is not an integer")),
    }
    Ok(())
}

const CRC32C_POLY: u32 = 0x82f6_3b78;

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ CRC32C_POLY } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C_TABLE: [u32; 256] = crc32c_table();

/// CRC-32C of `parts` concatenated.
pub(crate) fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for part in parts {
        for &b in *part {
            c = CRC32C_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}

/// LevelDB's (and TensorFlow's) masked CRC, as stored in files.
pub(crate) fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value (RFC 3720, appendix B.4).
        assert_eq!(crc32c(&[b"123456789"]), 0xe306_9283);
        assert_eq!(crc32c(&[b"1234", b"56789"]), 0xe306_9283);
        assert_eq!(crc32c(&[&[0u8; 32]]), 0x8a91_36aa);
    }

    #[test]
    fn reads_fields_and_refuses_malformed_messages() {
        // field 1 varint 150; field 2 bytes "hi"; field 3 fixed32 1.0f; field 4 packed [1, 300]
        let mut msg = vec![0x08, 0x96, 0x01, 0x12, 2, b'h', b'i', 0x1d];
        msg.extend(1.0f32.to_le_bytes());
        msg.extend([0x22, 3, 1, 0xac, 0x02]);
        let mut r = Reader::new(&msg);
        assert_eq!(r.next_field().unwrap(), Some((1, Value::Varint(150))));
        assert_eq!(r.next_field().unwrap(), Some((2, Value::Bytes(b"hi"))));
        let (f, v) = r.next_field().unwrap().unwrap();
        assert_eq!(f, 3);
        let mut floats = Vec::new();
        push_floats(v, &mut floats, "x").unwrap();
        assert_eq!(floats, [1.0]);
        let (_, v) = r.next_field().unwrap().unwrap();
        let mut ints = Vec::new();
        push_varints(v, &mut ints, "x").unwrap();
        assert_eq!(ints, [1, 300]);
        assert_eq!(r.next_field().unwrap(), None);
        // Every prefix of the message either reads or fails cleanly.
        for n in 0..msg.len() {
            let mut r = Reader::new(&msg[..n]);
            while let Ok(Some(_)) = r.next_field() {}
        }
        // A length past the end, an endless varint, a group, field 0.
        assert!(Reader::new(&[0x12, 5, b'a']).next_field().unwrap_err().contains("claims 5 bytes"));
        assert!(Reader::new(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).next_field().is_err());
        assert!(Reader::new(&[0x0b]).next_field().unwrap_err().contains("wire type 3"));
        assert!(Reader::new(&[0x00, 0x00]).next_field().unwrap_err().contains("field number 0"));
        assert!(push_floats(Value::Bytes(&[0; 5]), &mut floats, "data").unwrap_err().contains("multiple of 4"));
    }
}
