//! Hand-assembled PyTorch files for the tests: a tiny pickle writer and
//! builders for the legacy and zip layouts, so hostile variants can be made
//! byte by byte without Python or torch.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends pickle opcodes (protocol 2 unless stated).
#[derive(Default, Clone)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 0x02]) // PROTO 2
    }
    pub fn op(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(b'c').raw(format!("{module}\n{name}\n").as_bytes())
    }
    pub fn str(self, s: &str) -> Self {
        let len = (s.len() as u32).to_le_bytes();
        self.op(b'X').raw(&len).raw(s.as_bytes())
    }
    /// Non-negative int: BININT1/BININT2/BININT or LONG1 as Python would.
    pub fn int(self, v: u64) -> Self {
        if v < 256 {
            self.op(b'K').op(v as u8)
        } else if v < 65536 {
            self.op(b'M').raw(&(v as u16).to_le_bytes())
        } else if v < (1 << 31) {
            self.op(b'J').raw(&(v as u32).to_le_bytes())
        } else {
            // LONG1 with 9 bytes so the sign bit stays clear.
            let mut b = v.to_le_bytes().to_vec();
            b.push(0);
            self.op(0x8a).op(9).raw(&b)
        }
    }
    pub fn mark(self) -> Self {
        self.op(b'(')
    }
    pub fn tuple(self) -> Self {
        self.op(b't')
    }
    pub fn empty_dict(self) -> Self {
        self.op(b'}')
    }
    pub fn empty_tuple(self) -> Self {
        self.op(b')')
    }
    pub fn setitem(self) -> Self {
        self.op(b's')
    }
    pub fn reduce(self) -> Self {
        self.op(b'R')
    }
    pub fn none(self) -> Self {
        self.op(b'N')
    }
    pub fn stop(self) -> Self {
        self.op(b'.')
    }
    pub fn ints_tuple(mut self, v: &[u64]) -> Self {
        self = self.mark();
        for &x in v {
            self = self.int(x);
        }
        self.tuple()
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0
    }
}

/// One tensor entry of a state dict: a view into a storage.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    /// e.g. "FloatStorage"
    pub storage_type: String,
    pub key: String,
    /// numel the persistent id declares
    pub numel: u64,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

impl Entry {
    pub fn new(
        name: &str,
        storage_type: &str,
        key: &str,
        numel: u64,
        offset: u64,
        shape: &[u64],
        stride: &[u64],
    ) -> Self {
        Entry {
            name: name.into(),
            storage_type: storage_type.into(),
            key: key.into(),
            numel,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }
}

/// Push `_rebuild_tensor_v2(persistent_storage, offset, size, stride, False, OrderedDict())`.
pub fn push_tensor(p: Pickle, e: &Entry, legacy: bool) -> Pickle {
    let mut p = p
        .global("torch._utils", "_rebuild_tensor_v2")
        .mark()
        .mark()
        .str("storage")
        .global("torch", &e.storage_type)
        .str(&e.key)
        .str("cpu")
        .int(e.numel);
    if legacy {
        p = p.none(); // view_metadata
    }
    p.tuple()
        .op(b'Q') // BINPERSID
        .int(e.offset)
        .ints_tuple(&e.shape)
        .ints_tuple(&e.stride)
        .op(0x89) // False
        .global("collections", "OrderedDict")
        .empty_tuple()
        .reduce()
        .tuple()
        .reduce()
}

/// `OrderedDict([(name, tensor), ...])` built with SETITEM, then STOP.
pub fn state_dict_pickle(entries: &[Entry], legacy: bool) -> Vec<u8> {
    let mut p = Pickle::new()
        .global("collections", "OrderedDict")
        .empty_tuple()
        .reduce();
    for e in entries {
        p = p.str(&e.name);
        p = push_tensor(p, e, legacy);
        p = p.setitem();
    }
    p.stop().bytes()
}

pub fn magic_pickle() -> Vec<u8> {
    b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec()
}

pub fn protocol_pickle() -> Vec<u8> {
    b"\x80\x02M\xe9\x03.".to_vec() // 1001
}

pub fn sys_info_pickle() -> Vec<u8> {
    Pickle::new()
        .empty_dict()
        .str("little_endian")
        .op(0x88)
        .setitem()
        .stop()
        .bytes()
}

pub fn keys_pickle(keys: &[&str]) -> Vec<u8> {
    let mut p = Pickle::new().op(b']').mark();
    for k in keys {
        p = p.str(k);
    }
    p.op(b'e').stop().bytes()
}

/// A legacy file: the three header pickles, `main`, the key list, then each
/// storage as (u64 numel, bytes). `storages` are (key, declared numel, bytes).
pub fn legacy_file(main: &[u8], storages: &[(&str, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = magic_pickle();
    out.extend(protocol_pickle());
    out.extend(sys_info_pickle());
    out.extend_from_slice(main);
    let keys: Vec<&str> = storages.iter().map(|s| s.0).collect();
    out.extend(keys_pickle(&keys));
    for (_, numel, bytes) in storages {
        out.extend(numel.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// A zip checkpoint with `archive/data.pkl`, `archive/byteorder` and
/// `archive/data/<key>` for each storage.
pub fn zip_file(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    zip_file_with_byteorder(pkl, storages, "little")
}

pub fn zip_file_with_byteorder(
    pkl: &[u8],
    storages: &[(&str, Vec<u8>)],
    byteorder: &str,
) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pkl).unwrap();
        z.start_file("archive/byteorder", opts).unwrap();
        z.write_all(byteorder.as_bytes()).unwrap();
        for (key, bytes) in storages {
            z.start_file(format!("archive/data/{key}"), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The small valid state dict used across tests:
/// * `w`: a [2,3] transposed view of storage "0" = [0,1,2,3,4,5] → [0,2,4,1,3,5]
/// * `b`: contiguous [2] at offset 4 of storage "0" → [4,5]
/// * `n`: i64 scalar in storage "1" → 7
pub fn sample_entries() -> Vec<Entry> {
    vec![
        Entry::new("w", "FloatStorage", "0", 6, 0, &[2, 3], &[1, 2]),
        Entry::new("b", "FloatStorage", "0", 6, 4, &[2], &[1]),
        Entry::new("n", "LongStorage", "1", 1, 0, &[], &[]),
    ]
}

pub fn sample_storages() -> Vec<(&'static str, u64, Vec<u8>)> {
    vec![
        ("0", 6, f32_bytes(&[0., 1., 2., 3., 4., 5.])),
        ("1", 1, i64_bytes(&[7])),
    ]
}

pub fn sample_legacy() -> Vec<u8> {
    legacy_file(
        &state_dict_pickle(&sample_entries(), true),
        &sample_storages(),
    )
}

pub fn sample_zip() -> Vec<u8> {
    let storages: Vec<(&str, Vec<u8>)> = sample_storages()
        .into_iter()
        .map(|(k, _, b)| (k, b))
        .collect();
    zip_file(&state_dict_pickle(&sample_entries(), false), &storages)
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
