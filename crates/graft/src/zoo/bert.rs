//! BERT encoder (Devlin et al., 2019) as used by sentence-transformers' all-MiniLM-L6-v2:
//! post-LayerNorm transformer layers, absolute position embeddings, token-type embeddings,
//! GELU in its exact erf form (Hugging Face's `"gelu"`), LayerNorm eps 1e-12.
//!
//! Field names follow the Hugging Face checkpoint (`embeddings.word_embeddings`,
//! `encoder.layer.3.attention.output.LayerNorm`, …) so that module paths are the names in
//! `model.safetensors`. One name cannot be kept: `self` is a Rust keyword, so the checkpoint's
//! `attention.self.query` lives at `attention.self_.query` ([`checkpoint_name`] maps back).
//! The `pooler` of the checkpoint is not built: sentence embeddings mean-pool the last hidden
//! state instead. There is no dropout; this encoder is for inference and frozen features.

#![allow(non_snake_case)] // `LayerNorm` fields: the checkpoint's names.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use graft_weights::StateDict;
use serde::{Deserialize, Serialize};

use super::layers::{LayerRow, ParamRow};
use crate::export::onnx::{int, ints, OnnxGraph};
use crate::export::proto::FLOAT;
use super::load::WeightSource;
use crate::{GraftError, Result};

/// Added to attention scores of padding positions. Hugging Face adds `finfo(f32).min`; any
/// value that makes `exp` underflow to 0 gives the same probabilities, and a moderate one
/// cannot overflow to -inf when added to a negative score.
const MASKED_SCORE: f32 = -1e9;

/// Shape of a BERT encoder (the fields of Hugging Face's `config.json` that matter here).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// all-MiniLM-L6-v2 (`nreimers/MiniLM-L6-H384-uncased` fine-tuned by sentence-transformers).
    pub fn minilm_l6() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// Builds the encoder with fresh weights (overwritten by [`BertModel::load_weights`]).
    pub fn init(&self, device: &Device) -> BertModel {
        let d = self.hidden_size;
        BertModel {
            embeddings: BertEmbeddings {
                word_embeddings: EmbeddingConfig::new(self.vocab_size, d).init(device),
                position_embeddings: EmbeddingConfig::new(self.max_position_embeddings, d).init(device),
                token_type_embeddings: EmbeddingConfig::new(self.type_vocab_size, d).init(device),
                LayerNorm: LayerNorm::init(d, self.layer_norm_eps, device),
            },
            encoder: BertEncoder {
                layer: (0..self.num_hidden_layers).map(|_| BertLayer::init(self, device)).collect(),
            },
            num_attention_heads: self.num_attention_heads,
        }
    }

    /// The layer table for `inspect`, under checkpoint names, for sequences of `seq_len` tokens.
    pub fn layer_rows(&self, seq_len: usize) -> Vec<LayerRow> {
        let (d, f) = (self.hidden_size, self.intermediate_size);
        let row = |name: String, kind: &str, out: Vec<usize>, params: Vec<ParamRow>| LayerRow {
            name,
            kind: kind.into(),
            output_shape: out,
            params,
            is_head: false,
            block: None,
        };
        let embedding = |name: &str, rows: usize| {
            row(name.into(), "Embedding", vec![seq_len, d], vec![ParamRow::weight(&format!("{name}.weight"), rows * d)])
        };
        let linear = |name: String, d_in: usize, d_out: usize| {
            let params = vec![
                ParamRow::weight(&format!("{name}.weight"), d_in * d_out),
                ParamRow::weight(&format!("{name}.bias"), d_out),
            ];
            row(name, "Linear", vec![seq_len, d_out], params)
        };
        let norm = |name: String| {
            let params =
                vec![ParamRow::weight(&format!("{name}.weight"), d), ParamRow::weight(&format!("{name}.bias"), d)];
            row(name, "LayerNorm", vec![seq_len, d], params)
        };
        let mut rows = vec![
            embedding("embeddings.word_embeddings", self.vocab_size),
            embedding("embeddings.position_embeddings", self.max_position_embeddings),
            embedding("embeddings.token_type_embeddings", self.type_vocab_size),
            norm("embeddings.LayerNorm".into()),
        ];
        for i in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            for qkv in ["query", "key", "value"] {
                rows.push(linear(format!("{p}.attention.self.{qkv}"), d, d));
            }
            rows.push(linear(format!("{p}.attention.output.dense"), d, d));
            rows.push(norm(format!("{p}.attention.output.LayerNorm")));
            rows.push(linear(format!("{p}.intermediate.dense"), d, f));
            rows.push(linear(format!("{p}.output.dense"), f, d));
            rows.push(norm(format!("{p}.output.LayerNorm")));
        }
        rows.push(row("mean_pooling".into(), "MeanPool+L2Normalize", vec![d], vec![]));
        rows
    }
}

/// The checkpoint name of a module path (`…attention.self_.query.weight` →
/// `…attention.self.query.weight`); the one place where the two differ.
pub fn checkpoint_name(module_path: &str) -> String {
    module_path.replace(".self_.", ".self.")
}

/// The prefix under which `dict` holds the encoder: `""` for a bare `BertModel` state dict
/// (sentence-transformers), `"bert."` for task models such as `BertForSequenceClassification`.
pub fn checkpoint_prefix(dict: &StateDict) -> &'static str {
    let key = "embeddings.word_embeddings.weight";
    if !dict.tensors.contains_key(key) && dict.tensors.contains_key(&format!("bert.{key}")) {
        "bert."
    } else {
        ""
    }
}

/// LayerNorm with the checkpoint's parameter names (`weight`, `bias`; burn's own calls them
/// `gamma`, `beta`).
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    fn init(d: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            bias: Param::from_tensor(Tensor::zeros([d], device)),
            eps,
        }
    }

    /// Normalises over the last dimension: [N, L, D] → [N, L, D].
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        burn::tensor::module::layer_norm(x, self.weight.val(), Some(self.bias.val()), self.eps)
    }

    fn load(&mut self, w: &WeightSource, prefix: &str) -> Result<()> {
        let [d] = self.weight.lazy_shape().dims();
        self.weight = Param::from_tensor(w.tensor(&format!("{prefix}.weight"), [d])?);
        self.bias = Param::from_tensor(w.tensor(&format!("{prefix}.bias"), [d])?);
        Ok(())
    }
}

fn load_embedding(w: &WeightSource, embedding: &mut Embedding, prefix: &str) -> Result<()> {
    let shape: [usize; 2] = embedding.weight.lazy_shape().dims();
    embedding.weight = Param::from_tensor(w.tensor(&format!("{prefix}.weight"), shape)?);
    Ok(())
}

/// Word + position + token-type embeddings, then LayerNorm.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub LayerNorm: LayerNorm,
}

impl BertEmbeddings {
    /// Token ids [N, L] → [N, L, D]. Every token has type 0 (single sentences) and position
    /// `0..L`, as in Hugging Face when `token_type_ids` and `position_ids` are not given.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, l] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device).reshape([1, l]); // [1, L]
        let types = Tensor::<2, Int>::zeros([1, l], &device); // [1, L]
        let words = self.word_embeddings.forward(input_ids); // [N, L, D]
        let positions = self.position_embeddings.forward(positions); // [1, L, D]
        let types = self.token_type_embeddings.forward(types); // [1, L, D]
        self.LayerNorm.forward(words + positions + types) // [N, L, D]
    }

    fn load(&mut self, w: &WeightSource, prefix: &str) -> Result<()> {
        load_embedding(w, &mut self.word_embeddings, &format!("{prefix}.word_embeddings"))?;
        load_embedding(w, &mut self.position_embeddings, &format!("{prefix}.position_embeddings"))?;
        load_embedding(w, &mut self.token_type_embeddings, &format!("{prefix}.token_type_embeddings"))?;
        self.LayerNorm.load(w, &format!("{prefix}.LayerNorm"))
    }
}

/// Multi-head scaled dot-product self-attention (`attention.self` in the checkpoint).
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub num_heads: usize,
}

impl BertSelfAttention {
    /// [N, L, D] with an additive mask [N, 1, 1, L] → [N, L, D].
    pub fn forward(&self, x: Tensor<3>, mask_bias: Tensor<4>) -> Tensor<3> {
        let [n, l, d] = x.dims();
        let (h, dh) = (self.num_heads, d / self.num_heads);
        let heads = |t: Tensor<3>| t.reshape([n, l, h, dh]).swap_dims(1, 2); // [N, H, L, Dh]
        let q = heads(self.query.forward(x.clone()));
        let k = heads(self.key.forward(x.clone()));
        let v = heads(self.value.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f64).sqrt()); // [N, H, L, L]
        let probs = softmax(scores + mask_bias, 3); // [N, H, L, L]; padding keys get 0
        probs.matmul(v).swap_dims(1, 2).reshape([n, l, d]) // [N, L, D]
    }

    fn load(&mut self, w: &WeightSource, prefix: &str) -> Result<()> {
        w.linear(&mut self.query, &format!("{prefix}.query"))?;
        w.linear(&mut self.key, &format!("{prefix}.key"))?;
        w.linear(&mut self.value, &format!("{prefix}.value"))
    }
}

/// Projection back to the model width, residual, LayerNorm (post-norm). Used after attention
/// (`attention.output`) and after the feed-forward expansion (`output`).
#[derive(Module, Debug)]
pub struct BertOutput {
    pub dense: Linear,
    pub LayerNorm: LayerNorm,
}

impl BertOutput {
    /// [N, L, D_in] and the residual [N, L, D] → [N, L, D].
    pub fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.LayerNorm.forward(self.dense.forward(x) + residual)
    }

    fn load(&mut self, w: &WeightSource, prefix: &str) -> Result<()> {
        w.linear(&mut self.dense, &format!("{prefix}.dense"))?;
        self.LayerNorm.load(w, &format!("{prefix}.LayerNorm"))
    }
}

/// `attention`: self-attention followed by its output projection.
#[derive(Module, Debug)]
pub struct BertAttention {
    pub self_: BertSelfAttention,
    pub output: BertOutput,
}

/// The feed-forward expansion (`intermediate.dense`, then GELU).
#[derive(Module, Debug)]
pub struct BertIntermediate {
    pub dense: Linear,
}

/// One transformer layer (`encoder.layer.N`).
#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertOutput,
}

impl BertLayer {
    fn init(c: &BertConfig, device: &Device) -> Self {
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let linear = |i: usize, o: usize| LinearConfig::new(i, o).init(device);
        let output =
            |i: usize| BertOutput { dense: linear(i, d), LayerNorm: LayerNorm::init(d, c.layer_norm_eps, device) };
        Self {
            attention: BertAttention {
                self_: BertSelfAttention {
                    query: linear(d, d),
                    key: linear(d, d),
                    value: linear(d, d),
                    num_heads: c.num_attention_heads,
                },
                output: output(d),
            },
            intermediate: BertIntermediate { dense: linear(d, f) },
            output: output(f),
        }
    }

    /// [N, L, D] → [N, L, D].
    pub fn forward(&self, x: Tensor<3>, mask_bias: Tensor<4>) -> Tensor<3> {
        let attended = self.attention.self_.forward(x.clone(), mask_bias); // [N, L, D]
        let x = self.attention.output.forward(attended, x); // [N, L, D]
        let expanded = gelu(self.intermediate.dense.forward(x.clone())); // [N, L, F]
        self.output.forward(expanded, x) // [N, L, D]
    }

    fn load(&mut self, w: &WeightSource, prefix: &str) -> Result<()> {
        self.attention.self_.load(w, &format!("{prefix}.attention.self"))?;
        self.attention.output.load(w, &format!("{prefix}.attention.output"))?;
        w.linear(&mut self.intermediate.dense, &format!("{prefix}.intermediate.dense"))?;
        self.output.load(w, &format!("{prefix}.output"))
    }
}

/// The layer stack (`encoder`).
#[derive(Module, Debug)]
pub struct BertEncoder {
    pub layer: Vec<BertLayer>,
}

/// Token ids and attention mask of a padded batch, row-major on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// [rows × len] token ids; padding positions hold the pad id.
    pub ids: Vec<u32>,
    /// [rows × len]: 1 for real tokens, 0 for padding.
    pub mask: Vec<u32>,
    pub rows: usize,
    pub len: usize,
}

/// The encoder without the checkpoint's pooler.
#[derive(Module, Debug)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
    pub num_attention_heads: usize,
}

impl BertModel {
    /// Replaces every parameter with the checkpoint's, checking that each tensor exists and has
    /// the shape this configuration needs. Accepts bare (`embeddings.…`) and `bert.`-prefixed
    /// state dicts; other tensors (pooler, `position_ids`, task heads) are ignored.
    pub fn load_weights(mut self, w: &WeightSource) -> Result<Self> {
        let p = checkpoint_prefix(w.dict);
        self.embeddings.load(w, &format!("{p}embeddings"))?;
        for (i, layer) in self.encoder.layer.iter_mut().enumerate() {
            layer.load(w, &format!("{p}encoder.layer.{i}"))?;
        }
        Ok(self)
    }

    fn device(&self) -> Device {
        self.embeddings.word_embeddings.weight.val().device()
    }

    fn vocab_size(&self) -> usize {
        self.embeddings.word_embeddings.weight.lazy_shape().dims::<2>()[0]
    }

    fn max_positions(&self) -> usize {
        self.embeddings.position_embeddings.weight.lazy_shape().dims::<2>()[0]
    }

    /// Last hidden state: ids [N, L] and mask [N, L] (1 = token, 0 = padding) → [N, L, D].
    /// Inputs must be valid (ids below the vocabulary size, L ≤ max positions); [`embed`]
    /// checks them.
    ///
    /// [`embed`]: Self::embed
    pub fn forward(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2>) -> Tensor<3> {
        let [n, l] = input_ids.dims();
        // Padding keys get a large negative score so that softmax gives them no weight.
        let mask_bias = (attention_mask.neg() + 1.0).mul_scalar(MASKED_SCORE).reshape([n, 1, 1, l]); // [N, 1, 1, L]
        let mut x = self.embeddings.forward(input_ids); // [N, L, D]
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask_bias.clone()); // [N, L, D]
        }
        x
    }

    /// Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2: mean of
    /// the last hidden state over real tokens, then L2 normalisation. [rows, D].
    pub fn embed(&self, batch: &TokenBatch) -> Result<Tensor<2>> {
        self.check(batch)?;
        let device = self.device();
        let shape = [batch.rows, batch.len];
        let ids = batch.ids.iter().map(|&i| i as i64).collect::<Vec<_>>();
        let mask = batch.mask.iter().map(|&m| m as f32).collect::<Vec<_>>();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &device); // [N, L]
        let mask = Tensor::<2>::from_data(TensorData::new(mask, shape), &device); // [N, L]
        let hidden = self.forward(ids, mask.clone()); // [N, L, D]
        Ok(l2_normalize(mean_pool(hidden, mask))) // [N, D]
    }

    /// Rejects batches the forward pass would panic on or compute garbage for.
    fn check(&self, batch: &TokenBatch) -> Result<()> {
        let bad = |reason: String| GraftError::setting("token_batch", &format!("{}×{}", batch.rows, batch.len), reason);
        let cells = batch.rows.checked_mul(batch.len).ok_or_else(|| bad("size overflows".into()))?;
        if batch.rows == 0 || batch.len == 0 {
            return Err(bad("empty batch".into()));
        }
        if batch.ids.len() != cells || batch.mask.len() != cells {
            return Err(bad(format!("holds {} ids and {} mask values", batch.ids.len(), batch.mask.len())));
        }
        if batch.len > self.max_positions() {
            return Err(bad(format!("sequences are limited to {} tokens", self.max_positions())));
        }
        if let Some(&id) = batch.ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            return Err(bad(format!("token id {id} is outside the vocabulary of {}", self.vocab_size())));
        }
        if let Some(r) = batch.mask.chunks(batch.len).position(|row| row.iter().all(|&m| m == 0)) {
            return Err(bad(format!("row {r} has no unmasked token")));
        }
        Ok(())
    }
}

impl BertModel {
    /// Writes the encoder and the sentence embedding ([`BertModel::embed`]: mean over unmasked
    /// tokens, then unit length) into `g` on int64 `input_ids` and `attention_mask`
    /// ([N, L], L dynamic); returns the embedding's name ([N, D]). opset 17:
    /// `LayerNormalization`, exact GELU through `Erf`, the padding mask as a −1e9 score bias.
    pub fn to_onnx(&self, g: &mut OnnxGraph, input_ids: &str, attention_mask: &str) -> Result<String> {
        let e = &self.embeddings;
        let words = g.parameter("embeddings.word_embeddings.weight", e.word_embeddings.weight.val())?;
        let words = g.node("Gather", &[&words, input_ids], vec![int("axis", 0)], "embeddings.words"); // [N, L, D]
        let (zero, one) = (g.initializer_i64("index_zero", &[], &[0]), g.initializer_i64("index_one", &[], &[1]));
        let shape = g.node("Shape", &[input_ids], vec![], "ids_shape");
        let len = g.node("Gather", &[&shape, &one], vec![int("axis", 0)], "sequence_length");
        let positions = g.node("Range", &[&zero, &len, &one], vec![], "positions"); // [L]
        let table = g.parameter("embeddings.position_embeddings.weight", e.position_embeddings.weight.val())?;
        let positions = g.node("Gather", &[&table, &positions], vec![int("axis", 0)], "embeddings.positions"); // [L, D]
        let table = g.parameter("embeddings.token_type_embeddings.weight", e.token_type_embeddings.weight.val())?;
        let types = g.node("Gather", &[&table, &zero], vec![int("axis", 0)], "embeddings.types"); // [D]: type 0
        let x = g.add(&words, &positions);
        let x = g.add(&x, &types);
        let ln = &e.LayerNorm;
        let mut x = g.layer_norm(ln.weight.val(), ln.bias.val(), ln.eps, &x, "embeddings.LayerNorm")?;

        // (1 − mask) · −1e9 on the scores of padding keys: [N, 1, 1, L].
        let mask = g.node("Cast", &[attention_mask], vec![int("to", i64::from(FLOAT))], "mask"); // [N, L]
        let one_f = g.initializer("one_f", &[], &[1.0]);
        let inverse = g.node("Sub", &[&one_f, &mask], vec![], "mask_inverse");
        let masked = g.initializer("masked_score", &[], &[MASKED_SCORE]);
        let bias = g.node("Mul", &[&inverse, &masked], vec![], "mask_scores");
        let axes = g.initializer_i64("axes_1_2", &[2], &[1, 2]);
        let bias = g.node("Unsqueeze", &[&bias, &axes], vec![], "mask_bias");

        let d = e.word_embeddings.weight.lazy_shape().dims::<2>()[1];
        let (h, dh) = (self.num_attention_heads, d / self.num_attention_heads);
        let split = g.initializer_i64("heads_shape", &[4], &[0, 0, h as i64, dh as i64]);
        let merge = g.initializer_i64("merged_shape", &[3], &[0, 0, d as i64]);
        let sqrt_dh = g.initializer("sqrt_head_dim", &[], &[(dh as f64).sqrt() as f32]);
        for (i, layer) in self.encoder.layer.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            let a = &layer.attention.self_;
            let heads = |g: &mut OnnxGraph, linear: &Linear, name: &str, perm: &[i64]| -> Result<String> {
                let y = g.linear_nd(linear, &x, &format!("{p}.attention.self.{name}"))?; // [N, L, D]
                let y = g.node("Reshape", &[&y, &split], vec![], &format!("{p}.{name}.heads")); // [N, L, H, Dh]
                Ok(g.node("Transpose", &[&y], vec![ints("perm", perm)], &format!("{p}.{name}.t")))
            };
            let q = heads(g, &a.query, "query", &[0, 2, 1, 3])?; // [N, H, L, Dh]
            let k = heads(g, &a.key, "key", &[0, 2, 3, 1])?; // [N, H, Dh, L]
            let v = heads(g, &a.value, "value", &[0, 2, 1, 3])?; // [N, H, L, Dh]
            let scores = g.node("MatMul", &[&q, &k], vec![], &format!("{p}.scores"));
            let scores = g.node("Div", &[&scores, &sqrt_dh], vec![], &format!("{p}.scaled"));
            let scores = g.add(&scores, &bias);
            let probs = g.node("Softmax", &[&scores], vec![int("axis", 3)], &format!("{p}.attention"));
            let ctx = g.node("MatMul", &[&probs, &v], vec![], &format!("{p}.context")); // [N, H, L, Dh]
            let ctx = g.node("Transpose", &[&ctx], vec![ints("perm", &[0, 2, 1, 3])], &format!("{p}.context.t"));
            let ctx = g.node("Reshape", &[&ctx, &merge], vec![], &format!("{p}.context.merged")); // [N, L, D]
            let out = &layer.attention.output;
            let y = g.linear_nd(&out.dense, &ctx, &format!("{p}.attention.output.dense"))?;
            let y = g.add(&y, &x);
            x = g.layer_norm(out.LayerNorm.weight.val(), out.LayerNorm.bias.val(), out.LayerNorm.eps, &y, &format!("{p}.attention.output.LayerNorm"))?;
            let f = g.linear_nd(&layer.intermediate.dense, &x, &format!("{p}.intermediate.dense"))?;
            let f = g.gelu(&f);
            let out = &layer.output;
            let y = g.linear_nd(&out.dense, &f, &format!("{p}.output.dense"))?;
            let y = g.add(&y, &x);
            x = g.layer_norm(out.LayerNorm.weight.val(), out.LayerNorm.bias.val(), out.LayerNorm.eps, &y, &format!("{p}.output.LayerNorm"))?;
        }

        // Mean over unmasked tokens, then unit length (see `mean_pool`, `l2_normalize`).
        let last = g.initializer_i64("axis_2", &[1], &[2]);
        let mask3 = g.node("Unsqueeze", &[&mask, &last], vec![], "mask_3d"); // [N, L, 1]
        let kept = g.node("Mul", &[&x, &mask3], vec![], "masked_hidden");
        let tokens = g.initializer_i64("axis_1", &[1], &[1]);
        let summed = g.node("ReduceSum", &[&kept, &tokens], vec![int("keepdims", 0)], "summed"); // [N, D]
        let count = g.node("ReduceSum", &[&mask3, &tokens], vec![int("keepdims", 0)], "token_count"); // [N, 1]
        let floor = g.initializer("count_floor", &[], &[1e-9]);
        let count = g.node("Max", &[&count, &floor], vec![], "token_count_floored");
        let mean = g.node("Div", &[&summed, &count], vec![], "mean_pooled");
        let norm = g.node("ReduceL2", &[&mean], vec![ints("axes", &[1]), int("keepdims", 1)], "norm");
        let floor = g.initializer("norm_floor", &[], &[1e-12]);
        let norm = g.node("Max", &[&norm, &floor], vec![], "norm_floored");
        Ok(g.node("Div", &[&mean, &norm], vec![], "embedding"))
    }
}

/// Mean over the unmasked positions: [N, L, D] and mask [N, L] → [N, D].
pub fn mean_pool(hidden: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
    let [n, l, d] = hidden.dims();
    let mask = mask.reshape([n, l, 1]); // [N, L, 1]
    let summed = (hidden * mask.clone()).sum_dim(1).reshape([n, d]); // [N, D]
    // sentence-transformers clamps the count at 1e-9 so an all-padding row gives 0, not NaN.
    let count = mask.sum_dim(1).reshape([n, 1]).clamp_min(1e-9); // [N, 1]
    summed / count
}

/// Rows scaled to unit length (PyTorch's `F.normalize`, eps 1e-12): [N, D] → [N, D].
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12); // [N, 1]
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;

    fn tiny() -> BertConfig {
        BertConfig {
            vocab_size: 50,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }

    fn embed(model: &BertModel, ids: Vec<u32>, mask: Vec<u32>, rows: usize) -> Vec<f32> {
        let len = ids.len() / rows;
        let batch = TokenBatch { ids, mask, rows, len };
        model.embed(&batch).unwrap().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn minilm_parameter_count_matches_the_layer_table() {
        let config = BertConfig::minilm_l6();
        // all-MiniLM-L6-v2 has 22,713,216 parameters with its pooler (147,840), unused here.
        let rows = config.layer_rows(128);
        assert_eq!(rows.iter().map(LayerRow::num_params).sum::<usize>(), 22_565_376);
        assert_eq!(config.init(&default_device()).num_params(), 22_565_376);
        assert!(rows.iter().any(|r| r.name == "encoder.layer.5.attention.self.query"));
        assert_eq!(
            checkpoint_name("encoder.layer.5.attention.self_.query.weight"),
            "encoder.layer.5.attention.self.query.weight"
        );
    }

    #[test]
    fn padding_does_not_change_an_embedding() {
        let model = tiny().init(&default_device());
        let alone = embed(&model, vec![1, 7, 9, 2], vec![1; 4], 1);
        let padded =
            embed(&model, vec![1, 7, 9, 2, 0, 0, 1, 3, 4, 5, 6, 2], vec![1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1], 2);
        let d = alone.iter().zip(&padded[..8]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(d < 1e-5, "padding changed the embedding by {d}");
        let norm = alone.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn bad_batches_are_errors_not_panics() {
        let model = tiny().init(&default_device());
        let batch = |ids: Vec<u32>, mask: Vec<u32>, rows, len| TokenBatch { ids, mask, rows, len };
        assert!(model.embed(&batch(vec![1, 99], vec![1, 1], 1, 2)).is_err(), "id outside the vocabulary");
        assert!(model.embed(&batch(vec![1; 20], vec![1; 20], 1, 20)).is_err(), "longer than the positions");
        assert!(model.embed(&batch(vec![1, 2], vec![0, 0], 1, 2)).is_err(), "nothing unmasked");
        assert!(model.embed(&batch(vec![1, 2, 3], vec![1, 1], 1, 2)).is_err(), "ragged");
        assert!(model.embed(&batch(vec![], vec![], 0, 0)).is_err(), "empty");
    }
}
