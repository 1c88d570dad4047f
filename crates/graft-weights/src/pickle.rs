//! A pickle virtual machine that only *describes* objects and never runs code.
//!
//! Python's unpickler imports any module and calls any callable a pickle
//! names, which is why `torch.load` on an untrusted file is remote code
//! execution. This VM instead resolves `GLOBAL`/`STACK_GLOBAL` against a
//! fixed allowlist of what a PyTorch state dict needs (an `OrderedDict`, the
//! tensor-rebuild helpers, the storage types, dtypes) and rejects everything
//! else with [`WeightsError::ForbiddenGlobal`] as soon as it is named, before
//! any `REDUCE` could call it. "Calling" an allowlisted global just builds a
//! plain data description ([`Obj::Tensor`], [`Obj::Dict`]).
//!
//! Objects live in an arena (`Vec<Obj>`) and refer to each other by index.
//! That gives Python's aliasing semantics for free (a memoised list that is
//! appended to later is the same object everywhere), makes reference cycles
//! harmless, and means no recursion anywhere: neither dropping a deeply
//! nested structure nor walking it can overflow the stack. Consumers only
//! ever look two levels deep (checkpoint dict → state dict → tensor).
//!
//! Resource use is linear in the pickle's size and capped besides: every object,
//! memo entry and copy the VM makes is charged against a memory budget of
//! [`PICKLE_MEMORY_PER_BYTE`] bytes per byte of pickle (plus
//! [`PICKLE_MEMORY_BASE`]), never more than [`MAX_PICKLE_MEMORY`]; a pickle that
//! needs more is refused as soon as it does (see [`crate::limits`]).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{sanitize, WeightsError};
use crate::limits::{
    MAX_PICKLE_LINE as MAX_LINE, MAX_PICKLE_MARK_DEPTH as MAX_MARK_DEPTH, MAX_PICKLE_MEMORY,
    MAX_PICKLE_STACK as MAX_STACK, MAX_TENSOR_DIMS as MAX_DIMS, PICKLE_MEMORY_BASE,
    PICKLE_MEMORY_PER_BYTE,
};
use crate::tensor::{DType, ViewSpec};

/// Index of an object in [`Unpickled::arena`].
pub(crate) type Id = usize;

/// What one memo entry costs (hash map slot, key, value, control bytes, slack).
const MEMO_ENTRY_BYTES: u64 = 32;
/// What the allocator adds to every heap allocation (header, rounding).
const ALLOC_OVERHEAD: u64 = 16;

/// The globals a state-dict pickle may name. Anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    /// `torch.FloatStorage` etc.; `UntypedStorage` maps to bytes (`U8`).
    Storage(DType),
    /// `torch.float32` etc. Only ever a value, never called.
    Dtype(DType),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Global> {
        let storage = |name: &str| -> Option<DType> {
            Some(match name {
                "FloatStorage" => DType::F32,
                "HalfStorage" => DType::F16,
                "BFloat16Storage" => DType::BF16,
                "DoubleStorage" => DType::F64,
                "LongStorage" => DType::I64,
                "IntStorage" => DType::I32,
                "ShortStorage" => DType::I16,
                "CharStorage" => DType::I8,
                "ByteStorage" => DType::U8,
                "BoolStorage" => DType::Bool,
                "UntypedStorage" => DType::U8,
                _ => return None,
            })
        };
        let dtype = |name: &str| -> Option<DType> {
            Some(match name {
                "float32" | "float" => DType::F32,
                "float16" | "half" => DType::F16,
                "bfloat16" => DType::BF16,
                "float64" | "double" => DType::F64,
                "int64" | "long" => DType::I64,
                "int32" | "int" => DType::I32,
                "int16" | "short" => DType::I16,
                "int8" => DType::I8,
                "uint8" => DType::U8,
                "bool" => DType::Bool,
                _ => return None,
            })
        };
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch.storage", "UntypedStorage") => Some(Global::Storage(DType::U8)),
            ("torch", n) => storage(n)
                .map(Global::Storage)
                .or_else(|| dtype(n).map(Global::Dtype)),
            _ => None,
        }
    }

    fn python_name(self) -> &'static str {
        match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildTensor => "torch._utils._rebuild_tensor",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::Storage(_) => "a torch storage type",
            Global::Dtype(_) => "a torch dtype",
        }
    }
}

/// A storage as named by a persistent id:
/// `('storage', storage_type, key, location, numel[, view_metadata])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub dtype: DType,
    pub key: String,
    /// Elements (of `dtype`) in the storage.
    pub numel: u64,
    /// Legacy format only: this storage is a slice of the root storage `key`.
    pub view: Option<StorageSlice>,
}

/// Legacy storage views: `(view_key, offset, size)`, offset and size in elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageSlice {
    pub view_key: String,
    pub offset: u64,
    pub size: u64,
}

/// What `_rebuild_tensor_v2(storage, offset, size, stride, ...)` describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub view: ViewSpec,
}

/// A Python object, as far as a state dict needs one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Obj {
    None,
    Bool(bool),
    /// Pickle integers up to 16 bytes; the torch magic number needs 80 bits.
    Int(i128),
    /// An integer too large for `i128`. Nothing in a state dict needs its value.
    BigInt,
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// Insertion-ordered pairs; on lookup the last duplicate wins, as in Python.
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Global(Global),
    // Boxed: they are large and rare, and every arena slot is as large as the
    // largest variant (32 bytes with these boxed).
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
}

impl Obj {
    /// Heap bytes this object holds beyond its arena slot, for the memory budget.
    fn heap_bytes(&self) -> u64 {
        let storage = |s: &StorageRef| {
            (std::mem::size_of::<StorageRef>()
                + s.key.len()
                + s.view.as_ref().map_or(0, |v| v.view_key.len())) as u64
        };
        let ids = |n: usize| n as u64 * std::mem::size_of::<Id>() as u64;
        let heap = |n: u64| if n == 0 { 0 } else { n + ALLOC_OVERHEAD };
        match self {
            Obj::Str(s) => heap(s.len() as u64),
            Obj::Bytes(b) => heap(b.len() as u64),
            Obj::Tuple(v) | Obj::List(v) | Obj::Set(v) => heap(ids(v.len())),
            Obj::Dict(v) => heap(ids(2 * v.len())),
            Obj::Storage(s) => heap(storage(s)) + ALLOC_OVERHEAD,
            Obj::Tensor(t) => {
                heap(storage(&t.storage))
                    + (std::mem::size_of::<TensorRef>() - std::mem::size_of::<StorageRef>())
                        as u64
                    + heap(ids(t.view.shape.len())) + heap(ids(t.view.stride.len()))
                    + 2 * ALLOC_OVERHEAD
            }
            _ => 0,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "bool",
            Obj::Int(_) | Obj::BigInt => "int",
            Obj::Float(_) => "float",
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Set(_) => "set",
            Obj::Global(_) => "global",
            Obj::Storage(_) => "storage",
            Obj::Tensor(_) => "tensor",
        }
    }
}

/// The result of running one pickle.
#[derive(Debug)]
pub(crate) struct Unpickled {
    pub arena: Vec<Obj>,
    pub root: Id,
    /// Bytes charged against the VM's memory budget.
    #[allow(dead_code)] // read by tests
    pub memory_used: u64,
}

impl Unpickled {
    pub fn get(&self, id: Id) -> &Obj {
        // Ids are only ever created by `Vm::alloc`, so this cannot miss; the
        // fallback keeps the promise of never panicking regardless.
        self.arena.get(id).unwrap_or(&Obj::None)
    }

    pub fn root(&self) -> &Obj {
        self.get(self.root)
    }

    /// A `str` (or, for Python 2 pickles, a UTF-8 `bytes`) object.
    pub fn as_str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Obj::Str(s) => Some(s),
            Obj::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// `dict[key]` for a string key; the last duplicate wins.
    pub fn dict_get(&self, dict: Id, key: &str) -> Option<Id> {
        match self.get(dict) {
            Obj::Dict(items) => items
                .iter()
                .rev()
                .find(|(k, _)| self.as_str(*k) == Some(key))
                .map(|&(_, v)| v),
            _ => None,
        }
    }

    /// The tensors of the state dict, by name. The top-level object is either
    /// the state dict itself or a checkpoint dict holding it under one of the
    /// usual keys. Entries that are not tensors (`_metadata`, epoch counters,
    /// optimizer state...) are skipped.
    pub fn state_dict_tensors(
        &self,
        path: &Path,
    ) -> Result<Vec<(String, TensorRef)>, WeightsError> {
        if !matches!(self.root(), Obj::Dict(_)) {
            return Err(WeightsError::corrupt(
                path,
                format!(
                    "top-level object is a {}, not a dict of tensors",
                    self.root().type_name()
                ),
            ));
        }
        let mut dict = self.root;
        for key in ["state_dict", "model_state_dict", "model"] {
            if let Some(inner) = self.dict_get(self.root, key) {
                if matches!(self.get(inner), Obj::Dict(_)) {
                    dict = inner;
                    break;
                }
            }
        }
        let Obj::Dict(items) = self.get(dict) else {
            return Ok(Vec::new());
        };
        // Keep the last of duplicate names, like Python's dict.
        let mut out: Vec<(String, TensorRef)> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for &(k, v) in items {
            let (Some(name), Obj::Tensor(t)) = (self.as_str(k), self.get(v)) else {
                continue;
            };
            match seen.get(name) {
                Some(&i) => {
                    if let Some(slot) = out.get_mut(i) {
                        slot.1 = (**t).clone();
                    }
                }
                None => {
                    seen.insert(name, out.len());
                    out.push((name.to_string(), (**t).clone()));
                }
            }
        }
        Ok(out)
    }

    /// Every storage named by a persistent id, reachable or not.
    pub fn storages(&self) -> impl Iterator<Item = &StorageRef> {
        self.arena.iter().filter_map(|o| match o {
            Obj::Storage(s) => Some(&**s),
            _ => None,
        })
    }
}

/// Run the pickle at the start of `data`. Returns the object graph and the
/// number of bytes consumed (up to and including `STOP`), so that callers can
/// read several pickles back to back. `what` names the pickle in errors.
pub(crate) fn unpickle(
    path: &Path,
    what: &str,
    data: &[u8],
) -> Result<(Unpickled, usize), WeightsError> {
    let budget = (data.len() as u64)
        .saturating_mul(PICKLE_MEMORY_PER_BYTE)
        .saturating_add(PICKLE_MEMORY_BASE)
        .min(MAX_PICKLE_MEMORY);
    let mut vm = Vm {
        path,
        what,
        data,
        budget,
        used: 0,
        pos: 0,
        op_pos: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = vm.run()?;
    Ok((
        Unpickled {
            arena: vm.arena,
            root,
            memory_used: vm.used,
        },
        vm.pos,
    ))
}

struct Vm<'a> {
    path: &'a Path,
    what: &'a str,
    data: &'a [u8],
    /// Bytes of memory this pickle may make the VM use, and what it has used.
    budget: u64,
    used: u64,
    pos: usize,
    /// Offset of the opcode being executed, for error messages.
    op_pos: usize,
    arena: Vec<Obj>,
    stack: Vec<Id>,
    /// Stack heights at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

type R<T> = Result<T, WeightsError>;

impl<'a> Vm<'a> {
    // ---- errors -------------------------------------------------------

    fn corrupt(&self, reason: impl std::fmt::Display) -> WeightsError {
        WeightsError::corrupt(
            self.path,
            format!("{} at byte {}: {}", self.what, self.op_pos, reason),
        )
    }

    fn truncated(&self) -> WeightsError {
        WeightsError::truncated(
            self.path,
            format!(
                "{} ends in the middle of the opcode at byte {} (no STOP before end of data)",
                self.what, self.op_pos
            ),
        )
    }

    // ---- input --------------------------------------------------------

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated())?;
        let bytes = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> R<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length prefix, checked against what is actually left *before* it is
    /// used to slice anything.
    fn len_from(&self, n: u64) -> R<usize> {
        let left = self.data.len().saturating_sub(self.pos);
        match usize::try_from(n) {
            Ok(n) if n <= left => Ok(n),
            _ => Err(self.truncated()),
        }
    }

    /// A text line (protocol-0 style arguments), without the newline.
    fn line(&mut self) -> R<&'a str> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let Some(nl) = rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') else {
            return Err(if rest.len() <= MAX_LINE {
                self.truncated()
            } else {
                self.corrupt("text argument longer than 4096 bytes")
            });
        };
        let line = self.take(nl + 1)?;
        let line = &line[..nl];
        std::str::from_utf8(line).map_err(|_| self.corrupt("text argument is not UTF-8"))
    }

    // ---- objects, stack, memo -----------------------------------------

    /// Count `bytes` of memory (or copying) against the budget; refuse the
    /// pickle as soon as it goes over.
    fn charge(&mut self, bytes: u64) -> R<()> {
        self.used = self.used.saturating_add(bytes);
        if self.used <= self.budget {
            return Ok(());
        }
        let capped = self.budget == MAX_PICKLE_MEMORY;
        Err(WeightsError::limit(
            self.path,
            format!(
                "{} at byte {}: its objects need more than {} bytes of memory for {} bytes of pickle ({} objects so far); a real state dict needs about 12 bytes per byte",
                self.what,
                self.op_pos,
                self.budget,
                self.data.len(),
                self.arena.len()
            ),
            if capped { "MAX_PICKLE_MEMORY" } else { "PICKLE_MEMORY_PER_BYTE" },
            if capped { MAX_PICKLE_MEMORY } else { PICKLE_MEMORY_PER_BYTE },
            "",
        ))
    }

    fn alloc(&mut self, obj: Obj) -> R<Id> {
        self.charge(std::mem::size_of::<Obj>() as u64 + obj.heap_bytes())?;
        self.arena.push(obj);
        Ok(self.arena.len() - 1)
    }

    fn push_id(&mut self, id: Id) -> R<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.corrupt("stack too deep"));
        }
        self.stack.push(id);
        Ok(())
    }

    fn push(&mut self, obj: Obj) -> R<()> {
        let id = self.alloc(obj)?;
        self.push_id(id)
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    /// Pop one item; items below the innermost MARK are out of reach, as in
    /// Python, whose MARK starts a fresh stack.
    fn pop(&mut self) -> R<Id> {
        if self.stack.len() <= self.floor() {
            return Err(self.corrupt("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.corrupt("stack underflow"))
    }

    fn top(&self) -> R<Id> {
        if self.stack.len() <= self.floor() {
            return Err(self.corrupt("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.corrupt("stack underflow"))
    }

    fn pop_mark(&mut self) -> R<Vec<Id>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.corrupt("MARK expected"))?;
        if mark > self.stack.len() {
            return Err(self.corrupt("stack underflow"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn obj(&self, id: Id) -> &Obj {
        self.arena.get(id).unwrap_or(&Obj::None)
    }

    fn obj_mut(&mut self, id: Id) -> R<&mut Obj> {
        // Compute the error before borrowing mutably.
        let err = self.corrupt("dangling object reference");
        self.arena.get_mut(id).ok_or(err)
    }

    fn memo_put(&mut self, key: u64) -> R<()> {
        let top = self.top()?;
        if !self.memo.contains_key(&key) {
            self.charge(MEMO_ENTRY_BYTES)?;
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> R<()> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.corrupt(format!("memo key {key} used before it was set")))?;
        self.push_id(id)
    }

    fn int(&self, id: Id) -> Option<i128> {
        match self.obj(id) {
            Obj::Int(i) => Some(*i),
            Obj::Bool(b) => Some(*b as i128),
            _ => None,
        }
    }

    fn string(&self, id: Id) -> Option<&str> {
        match self.obj(id) {
            Obj::Str(s) => Some(s),
            Obj::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    // ---- the interpreter ------------------------------------------------

    fn run(&mut self) -> R<Id> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                // -- framing and protocol
                0x80 => {
                    // PROTO
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.corrupt(format!("unsupported pickle protocol {v}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint for buffered readers; we have it all in memory.
                    self.u64()?;
                }
                b'.' => {
                    // STOP
                    let result = self.pop()?;
                    return Ok(result);
                }

                // -- stack manipulation
                b'(' => {
                    // MARK
                    if self.marks.len() >= MAX_MARK_DEPTH {
                        return Err(self.corrupt("MARKs nested too deeply"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    // POP: like Python, popping an empty frame discards its MARK.
                    if self.stack.len() > self.floor() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    // POP_MARK
                    self.pop_mark()?;
                }
                b'2' => {
                    // DUP
                    let top = self.top()?;
                    self.push_id(top)?;
                }

                // -- memo
                b'p' => {
                    // PUT (text)
                    let line = self.line()?;
                    let key = line
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| self.corrupt("bad PUT index"))?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    // BINPUT
                    let key = self.u8()? as u64;
                    self.memo_put(key)?;
                }
                b'r' => {
                    // LONG_BINPUT
                    let key = self.u32()? as u64;
                    self.memo_put(key)?;
                }
                0x94 => {
                    // MEMOIZE
                    let key = self.memo.len() as u64;
                    self.memo_put(key)?;
                }
                b'g' => {
                    // GET (text)
                    let line = self.line()?;
                    let key = line
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| self.corrupt("bad GET index"))?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    // BINGET
                    let key = self.u8()? as u64;
                    self.memo_get(key)?;
                }
                b'j' => {
                    // LONG_BINGET
                    let key = self.u32()? as u64;
                    self.memo_get(key)?;
                }

                // -- constants and scalars
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool(true))?,
                0x89 => self.push(Obj::Bool(false))?,
                b'J' => {
                    let v = self.i32()?;
                    self.push(Obj::Int(v as i128))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v as i128))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Obj::Int(v as i128))?;
                }
                0x8a => {
                    // LONG1
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    let obj = long_from_le(bytes);
                    self.push(obj)?;
                }
                0x8b => {
                    // LONG4
                    let n = self.i32()?;
                    if n < 0 {
                        return Err(self.corrupt("negative LONG4 length"));
                    }
                    let n = self.len_from(n as u64)?;
                    let bytes = self.take(n)?;
                    let obj = long_from_le(bytes);
                    self.push(obj)?;
                }
                b'I' => {
                    // INT (text); "01"/"00" are protocol 0's True/False.
                    let line = self.line()?;
                    let obj = match line {
                        "01" => Obj::Bool(true),
                        "00" => Obj::Bool(false),
                        s => Obj::Int(s.trim().parse().map_err(|_| self.corrupt("bad INT"))?),
                    };
                    self.push(obj)?;
                }
                b'L' => {
                    // LONG (text), e.g. "123L"
                    let line = self.line()?;
                    let digits = line.trim().trim_end_matches('L');
                    let obj = match digits.parse::<i128>() {
                        Ok(v) => Obj::Int(v),
                        Err(_)
                            if !digits.is_empty()
                                && digits
                                    .trim_start_matches('-')
                                    .bytes()
                                    .all(|b| b.is_ascii_digit()) =>
                        {
                            Obj::BigInt
                        }
                        Err(_) => return Err(self.corrupt("bad LONG")),
                    };
                    self.push(obj)?;
                }
                b'G' => {
                    // BINFLOAT: big-endian, unlike everything else.
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Obj::Float(v))?;
                }
                b'F' => {
                    // FLOAT (text)
                    let line = self.line()?;
                    let v = line
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| self.corrupt("bad FLOAT"))?;
                    self.push(Obj::Float(v))?;
                }

                // -- strings and bytes
                b'X' => {
                    // BINUNICODE
                    let n = self.u32()? as u64;
                    self.unicode(n)?;
                }
                0x8c => {
                    // SHORT_BINUNICODE
                    let n = self.u8()? as u64;
                    self.unicode(n)?;
                }
                0x8d => {
                    // BINUNICODE8
                    let n = self.u64()?;
                    self.unicode(n)?;
                }
                b'T' => {
                    // BINSTRING (Python 2 str): torch.load decodes these as UTF-8.
                    let n = self.i32()?;
                    if n < 0 {
                        return Err(self.corrupt("negative BINSTRING length"));
                    }
                    self.py2_string(n as u64)?;
                }
                b'U' => {
                    // SHORT_BINSTRING
                    let n = self.u8()? as u64;
                    self.py2_string(n)?;
                }
                b'B' => {
                    // BINBYTES
                    let n = self.u32()? as u64;
                    self.bytes(n)?;
                }
                b'C' => {
                    // SHORT_BINBYTES
                    let n = self.u8()? as u64;
                    self.bytes(n)?;
                }
                0x8e | 0x96 => {
                    // BINBYTES8, BYTEARRAY8
                    let n = self.u64()?;
                    self.bytes(n)?;
                }

                // -- containers
                b')' => self.push(Obj::Tuple(Vec::new()))?,
                b']' => self.push(Obj::List(Vec::new()))?,
                b'}' => self.push(Obj::Dict(Vec::new()))?,
                0x8f => self.push(Obj::Set(Vec::new()))?,
                b't' => {
                    // TUPLE
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items))?;
                }
                0x85..=0x87 => {
                    // TUPLE1..TUPLE3
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items))?;
                }
                b'l' => {
                    // LIST
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items))?;
                }
                b'd' => {
                    // DICT
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Obj::Dict(pairs))?;
                }
                0x91 => {
                    // FROZENSET
                    let items = self.pop_mark()?;
                    self.push(Obj::Set(items))?;
                }
                b'a' => {
                    // APPEND
                    let value = self.pop()?;
                    let list = self.top()?;
                    self.extend(list, vec![value], "APPEND")?;
                }
                b'e' => {
                    // APPENDS
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.extend(list, items, "APPENDS")?;
                }
                0x90 => {
                    // ADDITEMS
                    let items = self.pop_mark()?;
                    let set = self.top()?;
                    self.extend(set, items, "ADDITEMS")?;
                }
                b's' => {
                    // SETITEM
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, vec![(key, value)])?;
                }
                b'u' => {
                    // SETITEMS
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let dict = self.top()?;
                    self.set_items(dict, pairs)?;
                }

                // -- globals and calls: the security boundary
                b'c' => {
                    // GLOBAL "module\nname\n"
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.find_class(module, name)?;
                    self.push(Obj::Global(g))?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.string(module), self.string(name))
                    else {
                        return Err(self.corrupt("STACK_GLOBAL needs two strings"));
                    };
                    let (module, name) = (module.to_string(), name.to_string());
                    let g = self.find_class(&module, &name)?;
                    self.push(Obj::Global(g))?;
                }
                b'i' => {
                    // INST "module\nname\n": class + args from the MARK.
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.find_class(module, name)?;
                    let args = self.pop_mark()?;
                    let obj = self.instantiate(g, &args)?;
                    self.push_id(obj)?;
                }
                b'o' => {
                    // OBJ: MARK cls args... OBJ
                    let items = self.pop_mark()?;
                    let Some((&cls, args)) = items.split_first() else {
                        return Err(self.corrupt("OBJ without a class"));
                    };
                    let g = self.callable(cls)?;
                    let obj = self.instantiate(g, args)?;
                    self.push_id(obj)?;
                }
                b'R' => {
                    // REDUCE: callable(*args)
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let g = self.callable(func)?;
                    let args = self.tuple_items(args, "REDUCE arguments")?;
                    let obj = self.call(g, &args)?;
                    self.push_id(obj)?;
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let g = self.callable(cls)?;
                    let args = self.tuple_items(args, "NEWOBJ arguments")?;
                    let obj = self.instantiate(g, &args)?;
                    self.push_id(obj)?;
                }
                0x92 => {
                    // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let g = self.callable(cls)?;
                    if !matches!(self.obj(kwargs), Obj::Dict(d) if d.is_empty()) {
                        return Err(self.corrupt("NEWOBJ_EX with keyword arguments"));
                    }
                    let args = self.tuple_items(args, "NEWOBJ_EX arguments")?;
                    let obj = self.instantiate(g, &args)?;
                    self.push_id(obj)?;
                }
                b'b' => {
                    // BUILD: obj.__setstate__(state). The only instance state a
                    // state dict carries is the OrderedDict's `_metadata`
                    // (per-module version numbers), which we do not need.
                    // Ignoring it runs nothing.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    // BINPERSID
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push(Obj::Storage(Box::new(storage)))?;
                }
                b'P' => {
                    return Err(
                        self.corrupt("text persistent id (PERSID); PyTorch files use BINPERSID")
                    );
                }
                0x82..=0x84 => {
                    // EXT1/2/4 name a global through copyreg's registry, which
                    // we cannot check against the allowlist.
                    return Err(self.corrupt("extension-registry opcode (EXT*) not supported"));
                }
                0x97 | 0x98 => {
                    return Err(
                        self.corrupt("out-of-band buffers (pickle protocol 5) not supported")
                    );
                }
                b'S' | b'V' => {
                    return Err(self.corrupt(
                        "protocol-0 text string opcode; PyTorch files use pickle protocol 2",
                    ));
                }
                other => {
                    return Err(self.corrupt(format!("unknown pickle opcode 0x{other:02x}")));
                }
            }
        }
    }

    fn unicode(&mut self, n: u64) -> R<()> {
        let n = self.len_from(n)?;
        let bytes = self.take(n)?;
        let s =
            std::str::from_utf8(bytes).map_err(|_| self.corrupt("string is not valid UTF-8"))?;
        self.push(Obj::Str(s.to_string()))
    }

    fn py2_string(&mut self, n: u64) -> R<()> {
        let n = self.len_from(n)?;
        let bytes = self.take(n)?;
        let obj = match std::str::from_utf8(bytes) {
            Ok(s) => Obj::Str(s.to_string()),
            Err(_) => Obj::Bytes(bytes.to_vec()),
        };
        self.push(obj)
    }

    fn bytes(&mut self, n: u64) -> R<()> {
        let n = self.len_from(n)?;
        let bytes = self.take(n)?.to_vec();
        self.push(Obj::Bytes(bytes))
    }

    fn pairs(&self, items: Vec<Id>) -> R<Vec<(Id, Id)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.corrupt("odd number of items for a dict"));
        }
        Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    fn extend(&mut self, target: Id, items: Vec<Id>, op: &str) -> R<()> {
        self.charge(8 * items.len() as u64)?;
        let err = self.corrupt(format!("{op} on a {}", self.obj(target).type_name()));
        match self.obj_mut(target)? {
            Obj::List(v) | Obj::Set(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(err),
        }
    }

    fn set_items(&mut self, target: Id, pairs: Vec<(Id, Id)>) -> R<()> {
        self.charge(16 * pairs.len() as u64)?;
        let err = self.corrupt(format!("SETITEM on a {}", self.obj(target).type_name()));
        match self.obj_mut(target)? {
            Obj::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            _ => Err(err),
        }
    }

    fn tuple_items(&mut self, id: Id, what: &str) -> R<Vec<Id>> {
        // The copy is charged too: re-using one large tuple as the arguments
        // of many calls must not be free.
        if let Obj::Tuple(items) = self.obj(id) {
            let n = items.len() as u64;
            self.charge(8 * n)?;
        }
        match self.obj(id) {
            Obj::Tuple(items) => Ok(items.clone()),
            other => Err(self.corrupt(format!("{what} are a {}, not a tuple", other.type_name()))),
        }
    }

    /// GLOBAL's gatekeeper: the allowlist, nothing else.
    fn find_class(&self, module: &str, name: &str) -> R<Global> {
        Global::resolve(module, name).ok_or_else(|| WeightsError::ForbiddenGlobal {
            path: self.path.to_path_buf(),
            module: sanitize(module),
            name: sanitize(name),
        })
    }

    fn callable(&self, id: Id) -> R<Global> {
        match self.obj(id) {
            Obj::Global(g) => Ok(*g),
            other => Err(self.corrupt(format!("attempt to call a {}", other.type_name()))),
        }
    }

    /// `cls(*args)` / `cls.__new__(cls, *args)`: only OrderedDict is a class
    /// a state dict instantiates.
    fn instantiate(&mut self, g: Global, args: &[Id]) -> R<Id> {
        match g {
            Global::OrderedDict => self.call(g, args),
            other => Err(self.corrupt(format!(
                "{} cannot be instantiated here",
                other.python_name()
            ))),
        }
    }

    /// What REDUCE does with an allowlisted callable: build a description.
    fn call(&mut self, g: Global, args: &[Id]) -> R<Id> {
        match g {
            Global::OrderedDict => {
                let pairs = match args {
                    [] => Vec::new(),
                    // OrderedDict([(k, v), ...])
                    [items] => {
                        let items = match self.obj(*items) {
                            Obj::List(v) | Obj::Tuple(v) => v.clone(),
                            _ => return Err(self.corrupt("OrderedDict argument is not a list")),
                        };
                        self.charge(8 * items.len() as u64)?;
                        let mut pairs = Vec::with_capacity(items.len());
                        for item in items {
                            match self.obj(item) {
                                Obj::Tuple(kv) | Obj::List(kv) if kv.len() == 2 => {
                                    pairs.push((kv[0], kv[1]))
                                }
                                _ => return Err(self.corrupt("OrderedDict item is not a pair")),
                            }
                        }
                        pairs
                    }
                    _ => return Err(self.corrupt("OrderedDict called with several arguments")),
                };
                self.alloc(Obj::Dict(pairs))
            }
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                let name = g.python_name();
                // v2: (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
                let ok = match g {
                    Global::RebuildTensorV2 => args.len() == 6 || args.len() == 7,
                    _ => args.len() == 4,
                };
                if !ok {
                    return Err(
                        self.corrupt(format!("{name} called with {} arguments", args.len()))
                    );
                }
                let storage = match self.obj(args[0]) {
                    Obj::Storage(s) => (**s).clone(),
                    other => {
                        return Err(self.corrupt(format!(
                            "{name}: first argument is a {}, not a storage",
                            other.type_name()
                        )))
                    }
                };
                let offset = self
                    .int(args[1])
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| {
                        self.corrupt(format!("{name}: storage offset is not a non-negative int"))
                    })?;
                let shape = self.dims(args[2], name, "size")?;
                let stride = self.dims(args[3], name, "stride")?;
                if shape.len() != stride.len() {
                    return Err(self.corrupt(format!(
                        "{name}: size has {} dimensions but stride has {}",
                        shape.len(),
                        stride.len()
                    )));
                }
                self.alloc(Obj::Tensor(Box::new(TensorRef {
                    storage,
                    view: ViewSpec {
                        offset,
                        shape,
                        stride,
                    },
                })))
            }
            Global::RebuildParameter => {
                // (tensor, requires_grad, backward_hooks): a Parameter is its tensor.
                match args {
                    [t, _, _] if matches!(self.obj(*t), Obj::Tensor(_)) => Ok(*t),
                    _ => {
                        Err(self
                            .corrupt("_rebuild_parameter expects (tensor, requires_grad, hooks)"))
                    }
                }
            }
            Global::Storage(_) | Global::Dtype(_) => Err(self.corrupt(format!(
                "{} cannot be called in a state dict",
                g.python_name()
            ))),
        }
    }

    /// A size or stride tuple. Negative strides do not exist in PyTorch.
    fn dims(&self, id: Id, func: &str, what: &str) -> R<Vec<usize>> {
        let bad = || {
            self.corrupt(format!(
                "{func}: {what} is not a tuple of non-negative ints"
            ))
        };
        let items = match self.obj(id) {
            Obj::Tuple(v) | Obj::List(v) => v,
            _ => return Err(bad()),
        };
        if items.len() > MAX_DIMS {
            return Err(self.corrupt(format!("{func}: {} dimensions", items.len())));
        }
        items
            .iter()
            .map(|&i| {
                self.int(i)
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(bad)
            })
            .collect()
    }

    /// PyTorch's persistent ids: `('storage', storage_type, key, location,
    /// numel)` in zip files, plus `view_metadata` in legacy files. Anything
    /// else (e.g. the legacy `'module'` source records) is refused.
    fn persistent_load(&self, pid: Id) -> R<StorageRef> {
        let items = match self.obj(pid) {
            Obj::Tuple(items) => items,
            other => {
                return Err(self.corrupt(format!(
                    "persistent id is a {}, expected a ('storage', ...) tuple",
                    other.type_name()
                )))
            }
        };
        let typename = items.first().and_then(|&i| self.string(i));
        if typename != Some("storage") {
            return Err(self.corrupt(format!(
                "unsupported persistent id {:?} (only tensor storages are supported)",
                typename
                    .map(sanitize)
                    .unwrap_or_else(|| "<not a string>".into())
            )));
        }
        if items.len() != 5 && items.len() != 6 {
            return Err(self.corrupt(format!(
                "storage persistent id has {} fields, expected 5 or 6",
                items.len()
            )));
        }
        let dtype = match self.obj(items[1]) {
            Obj::Global(Global::Storage(d)) => *d,
            other => {
                return Err(self.corrupt(format!(
                    "storage persistent id: storage type is a {}, not a torch storage class",
                    other.type_name()
                )))
            }
        };
        let key = self
            .string(items[2])
            .ok_or_else(|| self.corrupt("storage persistent id: key is not a string"))?
            .to_string();
        // items[3] is the device ("cpu", "cuda:0"): everything lands on the CPU here.
        let numel = self
            .int(items[4])
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "storage `{}`: element count is not a non-negative int",
                    sanitize(&key)
                ))
            })?;
        let view = match items.get(5).map(|&i| self.obj(i)) {
            None | Some(Obj::None) => None,
            Some(Obj::Tuple(v)) if v.len() == 3 => {
                let view_key = self.string(v[0]).map(str::to_string);
                let offset = self.int(v[1]).and_then(|x| u64::try_from(x).ok());
                let size = self.int(v[2]).and_then(|x| u64::try_from(x).ok());
                match (view_key, offset, size) {
                    (Some(view_key), Some(offset), Some(size)) => Some(StorageSlice {
                        view_key,
                        offset,
                        size,
                    }),
                    _ => return Err(self.corrupt("storage persistent id: malformed view metadata")),
                }
            }
            Some(_) => return Err(self.corrupt("storage persistent id: malformed view metadata")),
        };
        Ok(StorageRef {
            dtype,
            key,
            numel,
            view,
        })
    }
}

/// Pickle's LONG1/LONG4 payload: little-endian two's complement.
fn long_from_le(bytes: &[u8]) -> Obj {
    if bytes.is_empty() {
        return Obj::Int(0);
    }
    if bytes.len() > 16 {
        return Obj::BigInt;
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut a = if negative { [0xffu8; 16] } else { [0u8; 16] };
    a[..bytes.len()].copy_from_slice(bytes);
    Obj::Int(i128::from_le_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Unpickled, WeightsError> {
        unpickle(Path::new("test.pkl"), "pickle", bytes).map(|(u, _)| u)
    }

    /// The budget's premise: real state-dict pickles need a few bytes of VM
    /// memory per byte. torchvision's checkpoints, from `../shared` beside the
    /// repository (as `tests/real_files.rs` finds them).
    #[test]
    fn real_state_dict_pickles_stay_far_below_the_memory_budget() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/torchvision");
        for name in ["resnet18", "mobilenet_v2"] {
            let file = dir.join(format!("{name}.pth"));
            let mut z = ::zip::ZipArchive::new(std::fs::File::open(&file).unwrap()).unwrap();
            let mut pkl = Vec::new();
            std::io::Read::read_to_end(&mut z.by_name(&format!("{name}/data.pkl")).unwrap(), &mut pkl)
                .unwrap();
            let (u, _) = unpickle(&file, "data.pkl", &pkl).unwrap();
            let per_byte = u.memory_used as f64 / pkl.len() as f64;
            eprintln!(
                "{name}: data.pkl {} bytes, {} objects, {} bytes charged ({per_byte:.2} per byte)",
                pkl.len(),
                u.arena.len(),
                u.memory_used
            );
            assert!(per_byte * 2.0 < PICKLE_MEMORY_PER_BYTE as f64, "{name}: {per_byte}");
        }
    }

    #[test]
    fn a_pickle_of_many_small_objects_is_refused_early_naming_the_limit() {
        // None, then TUPLE1 a million times: each byte wraps the top of the
        // stack in a new 1-tuple, the most memory one byte can create.
        let mut b = b"\x80\x02N".to_vec();
        b.extend(std::iter::repeat_n(0x85u8, 1 << 20));
        b.push(b'.');
        match run(&b) {
            Err(e @ WeightsError::LimitExceeded { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("PICKLE_MEMORY_PER_BYTE") && msg.contains("test.pkl"), "{msg}");
            }
            other => panic!("{:?}", other.map(|u| u.memory_used)),
        }
        // The same opcodes in a 10 KB pickle fit in the fixed base.
        let mut small = b"\x80\x02N".to_vec();
        small.extend(std::iter::repeat_n(0x85u8, 10_000));
        small.push(b'.');
        assert!(run(&small).is_ok());
    }

    #[test]
    fn reusing_one_large_container_as_arguments_is_charged() {
        // [(None, None)] * 100k built once (DUP, APPENDS) and memoised, then
        // passed to OrderedDict 10,000 times: every call copies it into a new
        // dict. Without charging the copies, 8 bytes of pickle would cost
        // 1.6 MB each, 16 GB in all.
        let mut q = b"\x80\x02](NN\x86".to_vec();
        q.extend(std::iter::repeat_n(b'2', 99_999));
        q.extend(b"eq\x000ccollections\nOrderedDict\nq\x010");
        for _ in 0..10_000 {
            q.extend(b"h\x01h\x00\x85R0"); // OrderedDict(list), POP
        }
        q.extend(b"N.");
        match run(&q) {
            Err(e @ WeightsError::LimitExceeded { .. }) => {
                assert!(e.to_string().contains("PICKLE_MEMORY_PER_BYTE"), "{e}")
            }
            other => panic!("{:?}", other.map(|u| u.memory_used)),
        }
        // Once is fine.
        let mut once = b"\x80\x02](NN\x86".to_vec();
        once.extend(std::iter::repeat_n(b'2', 99_999));
        once.extend(b"eq\x000ccollections\nOrderedDict\nq\x010h\x01h\x00\x85R.");
        let u = run(&once).unwrap();
        assert!(matches!(u.root(), Obj::Dict(d) if d.len() == 100_000));
    }

    #[test]
    fn torch_magic_number_fits() {
        // pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)
        let bytes = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        let u = run(bytes).unwrap();
        assert_eq!(u.root(), &Obj::Int(0x1950a86a20f9469cfc6c));
    }

    #[test]
    fn long1_negative() {
        assert_eq!(long_from_le(&[0xff]), Obj::Int(-1));
        assert_eq!(long_from_le(&[0x00, 0x80]), Obj::Int(-32768));
        assert_eq!(long_from_le(&[0x80, 0x00]), Obj::Int(128));
    }

    #[test]
    fn memo_aliasing_follows_python() {
        // l = []; d = {'a': l}; l.append(1)  -- built as: ] q0 } X'a' h0 s h0 K1 a 0 .
        // (EMPTY_LIST, BINPUT 0, EMPTY_DICT, 'a', BINGET 0, SETITEM, BINGET 0, 1, APPEND, POP, STOP)
        let bytes = b"\x80\x02]q\x00}X\x01\x00\x00\x00ah\x00sh\x00K\x01a0.";
        let u = run(bytes).unwrap();
        let list = u.dict_get(u.root, "a").unwrap();
        match u.get(list) {
            Obj::List(items) => assert_eq!(items.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forbidden_global_is_refused_at_global_time() {
        let bytes = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idR.";
        match run(bytes) {
            Err(WeightsError::ForbiddenGlobal { module, name, .. }) => {
                assert_eq!((module.as_str(), name.as_str()), ("os", "system"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mark_hides_lower_stack() {
        // N ( 0 0 . : the second POP would reach under the MARK frame, which
        // Python forbids; the first discards the (empty) MARK.
        assert!(run(b"N(0.").is_ok());
        assert!(run(b"(N1N.").is_ok());
        assert!(run(b"N(a.").is_err());
    }

    #[test]
    fn stop_on_empty_stack_is_an_error() {
        assert!(run(b".").is_err());
        assert!(matches!(
            run(b"\x80\x02"),
            Err(WeightsError::Truncated { .. })
        ));
    }

    #[test]
    fn length_prefix_larger_than_input_is_truncated_not_allocated() {
        // BINUNICODE8 claiming 2^62 bytes.
        let mut b = b"\x80\x04\x8d".to_vec();
        b.extend((1u64 << 62).to_le_bytes());
        b.extend(b"abc");
        assert!(matches!(run(&b), Err(WeightsError::Truncated { .. })));
    }
}
