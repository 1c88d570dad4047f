//! [`OnnxGraph`]: the ONNX graph builder every architecture's emitter writes into
//! ([`BackboneNet::to_onnx`](crate::zoo::backbone::BackboneNet::to_onnx)): initializers from
//! the module's own parameter tensors (what was fitted), nodes with fresh value names, and the
//! common layers (a convolution with its BatchNorm folded in, ReLU, ReLU6, global pooling,
//! linear layers).

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::tensor::Tensor;

use super::proto::{AttributeProto, AttributeValue, GraphProto, NodeProto, TensorProto, FLOAT, INT64};
use crate::zoo::fold::fold_conv_bn;
use crate::{GraftError, Result};

/// An ONNX graph under construction (opset 17, the default domain).
#[derive(Debug, Default)]
pub struct OnnxGraph {
    graph: GraphProto,
    used: std::collections::BTreeMap<String, usize>,
    /// The bounds of ReLU6's `Clip`, shared by every ReLU6.
    clip_bounds: Option<(String, String)>,
}

/// A node attribute.
pub fn attr(name: &str, value: AttributeValue) -> AttributeProto {
    AttributeProto { name: name.into(), value }
}

pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    attr(name, AttributeValue::Ints(v.to_vec()))
}

pub fn int(name: &str, v: i64) -> AttributeProto {
    attr(name, AttributeValue::Int(v))
}

pub fn float(name: &str, v: f32) -> AttributeProto {
    attr(name, AttributeValue::Float(v))
}

/// A tensor's values as f32, in burn's (row-major) layout.
pub fn values<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| GraftError::Data { path: what.into(), reason: format!("cannot read the parameter's values: {e:?}") })
}

impl OnnxGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// A value name not used before, from `hint` (`layer1.0.conv1`, `relu`).
    pub fn fresh(&mut self, hint: &str) -> String {
        let n = self.used.entry(hint.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            hint.to_string()
        } else {
            format!("{hint}_{}", *n - 1)
        }
    }

    /// A float initializer (raw little-endian data); returns its name.
    pub fn initializer(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(hint);
        let raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializers.push(TensorProto { name: name.clone(), dims: dims.iter().map(|&d| d as i64).collect(), data_type: FLOAT, raw_data });
        name
    }

    /// An int64 initializer (shapes, axes); returns its name.
    pub fn initializer_i64(&mut self, hint: &str, dims: &[usize], data: &[i64]) -> String {
        let name = self.fresh(hint);
        let raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializers.push(TensorProto { name: name.clone(), dims: dims.iter().map(|&d| d as i64).collect(), data_type: INT64, raw_data });
        name
    }

    /// A parameter tensor of the module as an initializer named `name`.
    pub fn parameter<const D: usize>(&mut self, name: &str, t: Tensor<D>) -> Result<String> {
        let dims = t.dims();
        let data = values(t, name)?;
        Ok(self.initializer(name, &dims, &data))
    }

    /// A node with the outputs named (see [`fresh`](Self::fresh)).
    pub fn push_node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attributes: Vec<AttributeProto>) {
        self.graph.nodes.push(NodeProto {
            name: format!("{op}:{}", outputs.first().copied().unwrap_or("")),
            op_type: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attributes,
        });
    }

    /// A node with one output, named from `hint`; returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>, hint: &str) -> String {
        let output = self.fresh(hint);
        self.graph.nodes.push(NodeProto {
            name: format!("{op}:{output}"),
            op_type: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.clone()],
            attributes,
        });
        output
    }

    /// `conv` (PyTorch/burn layout `[C_out, C_in/groups, kh, kw]`), with `bn` (inference mode:
    /// running statistics) folded into its weight and bias when given. `name` names the
    /// initializers and the output (the layer's name in the weights file).
    pub fn conv(&mut self, conv: &Conv2d, bn: Option<&BatchNorm>, x: &str, name: &str) -> Result<String> {
        let folded;
        let conv = match bn {
            Some(bn) => {
                folded = fold_conv_bn(conv, bn);
                &folded
            }
            None => conv,
        };
        let [_, _, kh, kw] = conv.weight.val().dims();
        let weight = self.parameter(&format!("{name}.weight"), conv.weight.val())?;
        let mut inputs = vec![x.to_string(), weight];
        if let Some(bias) = &conv.bias {
            inputs.push(self.parameter(&format!("{name}.bias"), bias.val())?);
        }
        let mut attributes = vec![
            ints("kernel_shape", &[kh as i64, kw as i64]),
            ints("strides", &conv.stride.map(|s| s as i64)),
            ints("dilations", &conv.dilation.map(|d| d as i64)),
            int("group", conv.groups as i64),
        ];
        match &conv.padding {
            // burn's `Same` puts the odd pixel at the end (bottom/right), as SAME_UPPER does.
            PaddingConfig2d::Same => attributes.push(attr("auto_pad", AttributeValue::String("SAME_UPPER".into()))),
            PaddingConfig2d::Valid => attributes.push(ints("pads", &[0, 0, 0, 0])),
            // burn: (top, left, bottom, right); ONNX: [top, left, bottom, right].
            PaddingConfig2d::Explicit(t, l, b, r) => attributes.push(ints("pads", &[*t as i64, *l as i64, *b as i64, *r as i64])),
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.node("Conv", &inputs, attributes, name))
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![], "relu")
    }

    /// ReLU6 as `Clip(x, 0, 6)` (opset ≥ 11: the bounds are inputs).
    pub fn relu6(&mut self, x: &str) -> String {
        let (lo, hi) = match self.clip_bounds.clone() {
            Some(bounds) => bounds,
            None => {
                let bounds = (self.initializer("zero", &[], &[0.0]), self.initializer("six", &[], &[6.0]));
                self.clip_bounds = Some(bounds.clone());
                bounds
            }
        };
        self.node("Clip", &[x, &lo, &hi], vec![], "relu6")
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], vec![], "add")
    }

    /// [N, C, h, w] → [N, C]: `GlobalAveragePool` then `Flatten`.
    pub fn global_avg_pool(&mut self, x: &str) -> String {
        let pooled = self.node("GlobalAveragePool", &[x], vec![], "pool");
        self.node("Flatten", &[&pooled], vec![int("axis", 1)], "pooled")
    }

    /// [N, C, h, w] → [N, C·h·w].
    pub fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], vec![int("axis", 1)], "flatten")
    }

    /// burn's `Linear` (weight `[in, out]`): `Gemm(x, W, b)`.
    pub fn linear(&mut self, linear: &Linear, x: &str, name: &str) -> Result<String> {
        let w = self.parameter(&format!("{name}.weight"), linear.weight.val())?;
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = &linear.bias {
            inputs.push(self.parameter(&format!("{name}.bias"), b.val())?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.node("Gemm", &inputs, vec![], name))
    }

    /// Softmax over the classes (axis 1), its output named `name`.
    /// burn's `Linear` on any rank (`[…, in]` → `[…, out]`): `MatMul(x, W)` then `Add(b)`.
    pub fn linear_nd(&mut self, linear: &Linear, x: &str, name: &str) -> Result<String> {
        let w = self.parameter(&format!("{name}.weight"), linear.weight.val())?;
        let y = self.node("MatMul", &[x, &w], vec![], &format!("{name}.matmul"));
        match &linear.bias {
            Some(b) => {
                let b = self.parameter(&format!("{name}.bias"), b.val())?;
                Ok(self.node("Add", &[&y, &b], vec![], name))
            }
            None => Ok(y),
        }
    }

    /// `LayerNormalization` over the last axis (opset 17).
    pub fn layer_norm(&mut self, weight: Tensor<1>, bias: Tensor<1>, epsilon: f64, x: &str, name: &str) -> Result<String> {
        let scale = self.parameter(&format!("{name}.weight"), weight)?;
        let b = self.parameter(&format!("{name}.bias"), bias)?;
        Ok(self.node("LayerNormalization", &[x, &scale, &b], vec![int("axis", -1), float("epsilon", epsilon as f32)], name))
    }

    /// Exact GELU, x·½·(1 + erf(x/√2)), as `Div`, `Erf`, `Add`, `Mul`, `Mul`.
    pub fn gelu(&mut self, x: &str) -> String {
        let sqrt2 = self.initializer("sqrt2", &[], &[std::f32::consts::SQRT_2]);
        let one = self.initializer("one", &[], &[1.0]);
        let half = self.initializer("half", &[], &[0.5]);
        let scaled = self.node("Div", &[x, &sqrt2], vec![], "gelu.scaled");
        let erf = self.node("Erf", &[&scaled], vec![], "gelu.erf");
        let shifted = self.node("Add", &[&erf, &one], vec![], "gelu.shifted");
        let y = self.node("Mul", &[x, &shifted], vec![], "gelu.product");
        self.node("Mul", &[&y, &half], vec![], "gelu")
    }

    pub fn softmax(&mut self, x: &str, name: &str) -> String {
        self.node("Softmax", &[x], vec![int("axis", 1)], name)
    }

    /// `MaxPool` with burn's kernel, stride and explicit padding.
    pub fn max_pool(&mut self, pool: &burn::nn::pool::MaxPool2d, x: &str, name: &str) -> Result<String> {
        let pads = match &pool.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => [*t, *l, *b, *r].map(|p| p as i64),
            PaddingConfig2d::Valid => [0; 4],
            PaddingConfig2d::Same => return Err(GraftError::Export { what: format!("{name} to ONNX"), reason: "max pooling with `same` padding has no writer".into() }),
        };
        let mut attributes = vec![ints("kernel_shape", &pool.kernel_size.map(|k| k as i64)), ints("strides", &pool.stride.map(|s| s as i64)), ints("pads", &pads), ints("dilations", &pool.dilation.map(|d| d as i64))];
        if pool.ceil_mode {
            attributes.push(int("ceil_mode", 1));
        }
        Ok(self.node("MaxPool", &[x], attributes, name))
    }

    /// The graph, with its inputs and outputs declared.
    pub fn finish(mut self, name: &str, inputs: Vec<super::proto::ValueInfoProto>, outputs: Vec<super::proto::ValueInfoProto>) -> GraphProto {
        self.graph.name = name.into();
        self.graph.inputs = inputs;
        self.graph.outputs = outputs;
        self.graph
    }

    /// Nodes so far (for tests).
    pub fn nodes(&self) -> &[NodeProto] {
        &self.graph.nodes
    }
}
