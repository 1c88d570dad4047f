//! The subset of ONNX's protobuf schema (`onnx.proto`, IR version 8) that graft writes, with a
//! minimal protobuf encoder. Field numbers are those of `onnx.proto`.
//!
//! Hand-written rather than through `prost`: graft only writes (never parses) these messages,
//! the encoder is ~40 lines (varints, tags, length-delimited fields), and it adds no crate to a
//! build that already takes minutes on a small machine.

/// Protobuf wire types used here.
const VARINT: u64 = 0;
const LEN: u64 = 2;

/// An encoding buffer.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn tag(&mut self, field: u64, wire: u64) {
        self.varint(field << 3 | wire);
    }
    /// An int64/int32 field (negative values as ten-byte two's complement, as protobuf does).
    fn int(&mut self, field: u64, v: i64) {
        self.tag(field, VARINT);
        self.varint(v as u64);
    }
    fn bytes(&mut self, field: u64, b: &[u8]) {
        self.tag(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u64, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn message(&mut self, field: u64, m: &impl Encode) {
        let mut inner = Writer::default();
        m.encode(&mut inner);
        self.bytes(field, &inner.0);
    }
    /// A repeated int64 field, unpacked (proto2's default, as ONNX's own writer emits it).
    fn ints(&mut self, field: u64, values: &[i64]) {
        for &v in values {
            self.int(field, v);
        }
    }
}

trait Encode {
    fn encode(&self, w: &mut Writer);
}

/// `TensorProto.DataType`.
pub const FLOAT: i32 = 1;
pub const INT64: i32 = 7;

/// `TensorProto`: an initializer, data little-endian in `raw_data`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorProto {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i32,
    pub raw_data: Vec<u8>,
}

impl Encode for TensorProto {
    fn encode(&self, w: &mut Writer) {
        w.ints(1, &self.dims);
        w.int(2, self.data_type as i64);
        w.string(8, &self.name);
        w.bytes(9, &self.raw_data);
    }
}

/// `AttributeProto` with the value kinds graft uses.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Float(f32),
    Int(i64),
    String(String),
    Ints(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttributeProto {
    pub name: String,
    pub value: AttributeValue,
}

impl Encode for AttributeProto {
    fn encode(&self, w: &mut Writer) {
        w.string(1, &self.name);
        // `type` (field 20): FLOAT = 1, INT = 2, STRING = 3, INTS = 7.
        match &self.value {
            AttributeValue::Float(f) => {
                w.tag(2, 5); // fixed32
                w.0.extend_from_slice(&f.to_le_bytes());
                w.int(20, 1);
            }
            AttributeValue::Int(i) => {
                w.int(3, *i);
                w.int(20, 2);
            }
            AttributeValue::String(s) => {
                w.string(4, s);
                w.int(20, 3);
            }
            AttributeValue::Ints(v) => {
                w.ints(8, v);
                w.int(20, 7);
            }
        }
    }
}

/// `NodeProto`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeProto {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<AttributeProto>,
}

impl Encode for NodeProto {
    fn encode(&self, w: &mut Writer) {
        for i in &self.inputs {
            w.string(1, i);
        }
        for o in &self.outputs {
            w.string(2, o);
        }
        w.string(3, &self.name);
        w.string(4, &self.op_type);
        for a in &self.attributes {
            w.message(5, a);
        }
    }
}

/// One dimension of a `TensorShapeProto`: a size, or a symbolic name (`batch`).
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Value(i64),
    Param(String),
}

impl Encode for Dim {
    fn encode(&self, w: &mut Writer) {
        match self {
            Dim::Value(v) => w.int(1, *v),
            Dim::Param(p) => w.string(2, p),
        }
    }
}

/// `ValueInfoProto` of a tensor: name, element type and shape (`TypeProto.Tensor`).
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfoProto {
    pub name: String,
    pub elem_type: i32,
    pub shape: Vec<Dim>,
}

struct Shape<'a>(&'a [Dim]);
impl Encode for Shape<'_> {
    fn encode(&self, w: &mut Writer) {
        for d in self.0 {
            w.message(1, d);
        }
    }
}

struct TensorType<'a>(&'a ValueInfoProto);
impl Encode for TensorType<'_> {
    fn encode(&self, w: &mut Writer) {
        w.int(1, self.0.elem_type as i64);
        w.message(2, &Shape(&self.0.shape));
    }
}

struct TypeProto<'a>(&'a ValueInfoProto);
impl Encode for TypeProto<'_> {
    fn encode(&self, w: &mut Writer) {
        w.message(1, &TensorType(self.0));
    }
}

impl Encode for ValueInfoProto {
    fn encode(&self, w: &mut Writer) {
        w.string(1, &self.name);
        w.message(2, &TypeProto(self));
    }
}

/// `GraphProto`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GraphProto {
    pub name: String,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
}

impl Encode for GraphProto {
    fn encode(&self, w: &mut Writer) {
        for n in &self.nodes {
            w.message(1, n);
        }
        w.string(2, &self.name);
        for t in &self.initializers {
            w.message(5, t);
        }
        for i in &self.inputs {
            w.message(11, i);
        }
        for o in &self.outputs {
            w.message(12, o);
        }
    }
}

/// `StringStringEntryProto`.
struct Entry<'a>(&'a str, &'a str);
impl Encode for Entry<'_> {
    fn encode(&self, w: &mut Writer) {
        w.string(1, self.0);
        w.string(2, self.1);
    }
}

/// `OperatorSetIdProto` of the default domain.
struct Opset(i64);
impl Encode for Opset {
    fn encode(&self, w: &mut Writer) {
        w.string(1, "");
        w.int(2, self.0);
    }
}

/// `ModelProto`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelProto {
    pub ir_version: i64,
    pub opset: i64,
    pub producer_name: String,
    pub producer_version: String,
    pub doc_string: String,
    pub graph: GraphProto,
    /// `metadata_props`, in order.
    pub metadata: Vec<(String, String)>,
}

impl ModelProto {
    /// The serialized model (what a `.onnx` file holds).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.0
    }
}

impl Encode for ModelProto {
    fn encode(&self, w: &mut Writer) {
        w.int(1, self.ir_version);
        w.string(2, &self.producer_name);
        w.string(3, &self.producer_version);
        w.string(6, &self.doc_string);
        w.message(7, &self.graph);
        w.message(8, &Opset(self.opset));
        for (k, v) in &self.metadata {
            w.message(14, &Entry(k, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-exact encodings checked against protobuf's reference encoder (Python `onnx`
    /// package, `SerializeToString()` of the same messages).
    #[test]
    fn encodes_like_protobuf() {
        let mut w = Writer::default();
        w.varint(300);
        assert_eq!(w.0, [0xac, 0x02]);
        let mut w = Writer::default();
        w.int(3, -1);
        assert_eq!(w.0, [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        // onnx.helper.make_attribute("axis", 1).SerializeToString()
        let mut w = Writer::default();
        AttributeProto { name: "axis".into(), value: AttributeValue::Int(1) }.encode(&mut w);
        assert_eq!(w.0, b"\x0a\x04axis\x18\x01\xa0\x01\x02");
        // onnx.helper.make_attribute("pads", [0, 1, 2, 3])
        let mut w = Writer::default();
        AttributeProto { name: "pads".into(), value: AttributeValue::Ints(vec![0, 1, 2, 3]) }.encode(&mut w);
        assert_eq!(w.0, b"\x0a\x04pads\x40\x00\x40\x01\x40\x02\x40\x03\xa0\x01\x07");
        // onnx.helper.make_attribute("min", 0.5)
        let mut w = Writer::default();
        AttributeProto { name: "min".into(), value: AttributeValue::Float(0.5) }.encode(&mut w);
        assert_eq!(w.0, b"\x0a\x03min\x15\x00\x00\x00\x3f\xa0\x01\x01");
    }
}
