//! A minimal TensorBoard event-file writer and reader for scalar summaries.
//!
//! TensorBoard reads `events.out.tfevents.*` files: a sequence of TFRecords, each holding one
//! serialized `tensorflow.Event` protobuf. graft only logs scalars (loss, accuracy, learning
//! rate), so instead of pulling in a protobuf crate and the TensorFlow schema we encode the
//! handful of fields we need by hand:
//!
//! ```text
//! Event   { 1: wall_time double, 2: step int64, 3: file_version string, 5: summary Summary }
//! Summary { 1: repeated Value }
//! Value   { 1: tag string, 2: simple_value float }
//! ```
//!
//! TFRecord framing: `u64 LE length`, `u32 LE masked crc32c(length bytes)`, `data`,
//! `u32 LE masked crc32c(data)`.
//!
//! The reader exists so tests (and graft's own checks) can verify what was written without
//! TensorBoard installed; it checks both CRCs of every record so corruption is never silent.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{GraftError, Result};

/// The version string TensorBoard expects in the first event of every file.
const FILE_VERSION: &str = "brain.Event:2";

/// Protobuf wire types used by the Event schema.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

// ---------------------------------------------------------------------------------------------
// CRC32C (Castagnoli)
// ---------------------------------------------------------------------------------------------

/// Byte-wise lookup table for the reflected Castagnoli polynomial, built at compile time.
const CRC32C_TABLE: [u32; 256] = build_crc32c_table();

const fn build_crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// CRC32C of `data`, as TFRecord uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = CRC32C_TABLE[((crc ^ byte as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord stores CRCs "masked" so that a CRC of data containing CRCs stays well distributed.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
}

// ---------------------------------------------------------------------------------------------
// Protobuf encoding
// ---------------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encodes one `Summary.Value { tag, simple_value }`.
fn encode_scalar_value(tag: &str, value: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 8);
    put_bytes(&mut out, 1, tag.as_bytes());
    put_key(&mut out, 2, WIRE_FIXED32);
    out.extend_from_slice(&value.to_le_bytes());
    out
}

/// Encodes an `Event`. `step` is `None` only for the file-version header, which has no step.
fn encode_event(wall_time: f64, step: Option<i64>, file_version: Option<&str>, scalars: &[(&str, f32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    put_key(&mut out, 1, WIRE_FIXED64);
    out.extend_from_slice(&wall_time.to_le_bytes());
    if let Some(step) = step {
        put_key(&mut out, 2, WIRE_VARINT);
        // int64 is encoded as the two's-complement u64 (negative steps take 10 bytes).
        put_varint(&mut out, step as u64);
    }
    if let Some(version) = file_version {
        put_bytes(&mut out, 3, version.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            put_bytes(&mut summary, 1, &encode_scalar_value(tag, *value));
        }
        put_bytes(&mut out, 5, &summary);
    }
    out
}

/// Frames `data` as one TFRecord.
fn frame_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// Appends scalar summaries to a TensorBoard event file.
///
/// Records are buffered; call [`EventWriter::flush`] (e.g. after each epoch) so a crash loses at
/// most the current epoch. Because the file is append-only and every record carries its own
/// CRCs, a torn final record is simply ignored by TensorBoard.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` (if needed) and a new `events.out.tfevents.<unix_secs>.<host>` file in it,
    /// starting with the `brain.Event:2` header TensorBoard requires. `dir` (a run's `tb/`) is
    /// refused if it is a symbolic link, and the file is created exclusively, never through one.
    pub fn create(dir: &Path) -> Result<Self> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| GraftError::io(parent, e))?;
        }
        crate::fsutil::create_dir_nofollow(dir)?;
        let (path, file) = create_unique(dir, unix_secs(), &hostname())?;
        let mut writer = EventWriter { path, out: BufWriter::new(file) };
        writer.write_record(&encode_event(wall_time(), None, Some(FILE_VERSION), &[]))?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs `value` under `tag` (e.g. `"loss/train"`) at `step` (e.g. the epoch).
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<()> {
        self.write_record(&encode_event(wall_time(), Some(step), None, &[(tag, value)]))
    }

    /// Pushes buffered records to disk and syncs, so TensorBoard sees them and a crash keeps them.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| GraftError::io(&self.path, e))?;
        self.out.get_ref().sync_data().map_err(|e| GraftError::io(&self.path, e))
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(&frame_record(data)).map_err(|e| GraftError::io(&self.path, e))
    }
}

impl Drop for EventWriter {
    /// Best effort: errors here cannot be reported; callers that care call `flush` themselves.
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// Creates a fresh event file, adding `.1`, `.2`, … when two writers start in the same second
/// so that one run never appends into another's file.
fn create_unique(dir: &Path, secs: u64, host: &str) -> Result<(PathBuf, File)> {
    let base = format!("events.out.tfevents.{secs}.{host}");
    for attempt in 0..1000u32 {
        let name = if attempt == 0 { base.clone() } else { format!("{base}.{attempt}") };
        let path = dir.join(name);
        match std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(GraftError::io(path, e)),
        }
    }
    Err(GraftError::Data { path: dir.join(base), reason: "too many event files with this name".into() })
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The host name as TensorBoard's own writers put it in file names; "graft" when unknown.
/// Characters other than `[A-Za-z0-9._-]` are replaced so the name is a safe file name.
fn hostname() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "graft".to_string());
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// One decoded event: the header (with `file_version`) or a batch of scalar values.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// `(tag, simple_value)` pairs; summary values of other kinds (images, tensors) are skipped.
    pub scalars: Vec<(String, f32)>,
}

/// Reads every record of an event file, verifying both CRCs of each.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = crate::fsutil::read_regular(path, crate::limits::MAX_METRICS_FILE_BYTES)?;
    let data_err = |index: usize, reason: String| GraftError::Data {
        path: path.to_path_buf(),
        reason: format!("event record {index}: {reason}"),
    };
    let mut events = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let index = events.len();
        let (data, next) = read_record(&bytes, pos).map_err(|r| data_err(index, r))?;
        events.push(decode_event(data).map_err(|r| data_err(index, r))?);
        pos = next;
    }
    Ok(events)
}

/// Returns the payload of the record at `pos` and the position after it.
fn read_record(bytes: &[u8], pos: usize) -> std::result::Result<(&[u8], usize), String> {
    let header = bytes.get(pos..pos + 12).ok_or("truncated record header")?;
    let (len_bytes, len_crc) = header.split_at(8);
    if masked_crc32c(len_bytes) != le_u32(len_crc) {
        return Err("length CRC mismatch (file corrupt)".into());
    }
    let len = usize::try_from(le_u64(len_bytes)).map_err(|_| "record length too large")?;
    let start = pos + 12;
    let end = start.checked_add(len).and_then(|e| e.checked_add(4)).ok_or("record length too large")?;
    let record = bytes.get(start..end).ok_or_else(|| format!("truncated record (needs {len} data bytes)"))?;
    let (data, data_crc) = record.split_at(len);
    if masked_crc32c(data) != le_u32(data_crc) {
        return Err("data CRC mismatch (file corrupt)".into());
    }
    Ok((data, end))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A protobuf field value as read off the wire.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// Iterates over the `(field number, value)` pairs of one protobuf message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= ((byte & 0x7F) as u64).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("field length too large")?;
        let slice = self.buf.get(self.pos..end).ok_or("truncated field")?;
        self.pos = end;
        Ok(slice)
    }

    fn next_field(&mut self) -> std::result::Result<(u64, Field<'a>), String> {
        let key = self.varint()?;
        let value = match (key & 7) as u8 {
            WIRE_VARINT => Field::Varint(self.varint()?),
            WIRE_FIXED64 => Field::Fixed64(self.take(8)?.try_into().map_err(|_| "bad fixed64")?),
            WIRE_LEN => {
                let len = usize::try_from(self.varint()?).map_err(|_| "field length too large")?;
                Field::Bytes(self.take(len)?)
            }
            WIRE_FIXED32 => Field::Fixed32(self.take(4)?.try_into().map_err(|_| "bad fixed32")?),
            other => return Err(format!("unsupported protobuf wire type {other}")),
        };
        Ok((key >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = std::result::Result<(u64, Field<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let item = self.next_field();
        if item.is_err() {
            self.pos = self.buf.len(); // stop after the first error
        }
        Some(item)
    }
}

fn decode_event(data: &[u8]) -> std::result::Result<Event, String> {
    let mut event = Event { wall_time: 0.0, step: 0, file_version: None, scalars: Vec::new() };
    for field in Fields::new(data) {
        match field? {
            (1, Field::Fixed64(b)) => event.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => event.step = v as i64,
            (3, Field::Bytes(b)) => event.file_version = Some(utf8(b)?),
            (5, Field::Bytes(b)) => decode_summary(b, &mut event.scalars)?,
            _ => {} // other Event fields (graph_def, log_message, …) are not graft's concern
        }
    }
    Ok(event)
}

fn decode_summary(data: &[u8], scalars: &mut Vec<(String, f32)>) -> std::result::Result<(), String> {
    for field in Fields::new(data) {
        if let (1, Field::Bytes(value)) = field? {
            if let Some(scalar) = decode_value(value)? {
                scalars.push(scalar);
            }
        }
    }
    Ok(())
}

/// Decodes a `Summary.Value`; `None` when it is not a `simple_value` scalar.
fn decode_value(data: &[u8]) -> std::result::Result<Option<(String, f32)>, String> {
    let mut tag = String::new();
    let mut value = None;
    for field in Fields::new(data) {
        match field? {
            (1, Field::Bytes(b)) => tag = utf8(b)?,
            (2, Field::Fixed32(b)) => value = Some(f32::from_le_bytes(b)),
            _ => {}
        }
    }
    Ok(value.map(|v| (tag, v)))
}

fn utf8(bytes: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "string field is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("graft-tb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Writes `loss`/`accuracy` for three steps and returns the file.
    fn write_sample(dir: &Path) -> PathBuf {
        let mut w = EventWriter::create(dir).expect("create");
        for (step, (loss, acc)) in [(2.5f32, 0.25f32), (1.25, 0.5), (0.625, 0.75)].into_iter().enumerate() {
            w.add_scalar("loss", loss, step as i64).expect("loss");
            w.add_scalar("accuracy", acc, step as i64).expect("acc");
        }
        w.flush().expect("flush");
        w.path().to_path_buf()
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn varint_encoding() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
        let mut f = Fields::new(&[0x10, 0xAC, 0x02]);
        assert!(matches!(f.next(), Some(Ok((2, Field::Varint(300))))));
    }

    #[test]
    fn file_name_and_header() {
        let dir = temp_dir("header");
        let w = EventWriter::create(&dir).expect("create");
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let events = read_events(w.path()).expect("read");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert!(events[0].wall_time > 1.0e9);
        // A second writer in the same directory (and likely the same second) gets its own file.
        let w2 = EventWriter::create(&dir).expect("create second");
        assert_ne!(w.path(), w2.path());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scalars_round_trip() {
        let dir = temp_dir("roundtrip");
        let path = write_sample(&dir);
        let events = read_events(&path).expect("read");
        assert_eq!(events.len(), 7);
        let loss: Vec<(i64, f32)> = events
            .iter()
            .flat_map(|e| e.scalars.iter().filter(|(t, _)| t == "loss").map(move |(_, v)| (e.step, *v)))
            .collect();
        assert_eq!(loss, [(0, 2.5), (1, 1.25), (2, 0.625)]);
        assert_eq!(events[6].scalars, [("accuracy".to_string(), 0.75)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn negative_and_large_steps_round_trip() {
        let data = encode_event(1.5, Some(-3), None, &[("x", f32::NAN)]);
        let e = decode_event(&data).expect("decode");
        assert_eq!(e.step, -3);
        assert!(e.scalars[0].1.is_nan());
        let e = decode_event(&encode_event(1.5, Some(i64::MAX), None, &[])).expect("decode");
        assert_eq!(e.step, i64::MAX);
    }

    #[test]
    fn flipped_byte_is_detected() {
        let dir = temp_dir("flip");
        let path = write_sample(&dir);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0x01; // inside the data of the last record
        std::fs::write(&path, &bytes).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("record 6") && err.contains("CRC"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");

        bytes[n - 10] ^= 0x01;
        bytes[2] ^= 0x40; // inside the length of the first record
        std::fs::write(&path, &bytes).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("record 0") && err.contains("length CRC"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncated_file_is_detected() {
        let dir = temp_dir("trunc");
        let path = write_sample(&dir);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [bytes.len() - 1, bytes.len() - 20, 5] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let err = read_events(&path).unwrap_err().to_string();
            assert!(err.contains("truncated"), "cut {cut}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = read_events(Path::new("/nonexistent/graft/events")).unwrap_err();
        assert!(matches!(err, GraftError::Io { .. }));
    }

    /// Not a unit test: writes a sample into `$GRAFT_TB_DIR` for checking with the real
    /// TensorBoard (`src/report/check_tensorboard.py`). Run with `-- --ignored`.
    #[test]
    #[ignore]
    fn write_sample_for_tensorboard() {
        let Ok(dir) = std::env::var("GRAFT_TB_DIR") else { return };
        let path = write_sample(Path::new(&dir));
        println!("wrote {}", path.display());
    }
}
