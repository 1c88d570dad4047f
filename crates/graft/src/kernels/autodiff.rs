//! Backward passes of graft's kernels, for burn's autodiff wrapper.

use burn::backend::{AutodiffBackend, Backend, TensorMetadata, tensor::FloatTensor};
use burn_autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};

use super::{Act, DepthwiseGeometry, GraftOps};

impl<B: Backend + GraftOps, C: CheckpointStrategy> GraftOps for Autodiff<B, C> {
    fn depthwise_nhwc(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, geometry: DepthwiseGeometry, act: Act) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Depthwise;

        impl<B: Backend + GraftOps> Backward<B, 3> for Depthwise {
            // The input, the weight, the output (for the activation's mask), as the forward saw
            // them.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, DepthwiseGeometry, Act);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let (x, weight, output, geometry, act) = ops.state;
                let grad = B::activation_backward(output, grads.consume::<B>(&ops.node), act); // [N, H', W', C]
                if let Some(node) = node_bias {
                    grads.register::<B>(node.id, column_sums::<B>(grad.clone(), geometry.channels));
                }
                if let Some(node) = node_weight {
                    grads.register::<B>(node.id, B::depthwise_nhwc_weight_grad(x, grad.clone(), geometry));
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::depthwise_nhwc_input_grad(grad, weight, geometry));
                }
            }
        }

        let parents = [x.node(), weight.node(), bias.node()];
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        let output = B::depthwise_nhwc(x.clone(), weight.clone(), bias.into_primitive(), geometry, act);
        match Depthwise.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, weight, output.clone(), geometry, act), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn depthwise_nhwc_input_grad(grad: FloatTensor<Self>, weight: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self> {
        // Second derivatives are not needed by anything graft trains.
        Self::from_inner(B::depthwise_nhwc_input_grad(grad.into_primitive(), weight.into_primitive(), geometry))
    }

    fn depthwise_nhwc_weight_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self> {
        Self::from_inner(B::depthwise_nhwc_weight_grad(x.into_primitive(), grad.into_primitive(), geometry))
    }

    fn patch_rows(x: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self> {
        // Inference only (the stem of a frozen network): untracked, no gradient to x.
        Self::from_inner(B::patch_rows(x.into_primitive(), geometry))
    }

    fn attention_rows(qkv: FloatTensor<Self>, batch: usize, heads: usize) -> FloatTensor<Self> {
        // Inference only (a frozen trunk); `kernels::multi_head_attention` takes burn's own
        // operations wherever a gradient is wanted.
        assert!(!qkv.is_tracked(), "attention_rows has no backward pass: a tensor on an autodiff graph goes through burn's operations");
        Self::from_inner(B::attention_rows(qkv.into_primitive(), batch, heads))
    }

    fn pointwise_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, act: Act) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Pointwise;

        impl<B: Backend + GraftOps> Backward<B, 3> for Pointwise {
            // The input, the weight, and what the activation's backward needs (its output or,
            // for GELU, its input).
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, Act);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let (x, weight, saved, act) = ops.state;
                let grad = B::activation_backward(saved, grads.consume::<B>(&ops.node), act); // [R, C_out]
                if let Some(node) = node_bias {
                    let channels = grad.shape()[1];
                    grads.register::<B>(node.id, column_sums::<B>(grad.clone(), channels));
                }
                if let Some(node) = node_weight {
                    grads.register::<B>(node.id, B::float_matmul(B::float_transpose(x), grad.clone())); // [C_in, C_out]
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::float_matmul(grad, B::float_transpose(weight))); // [R, C_in]
                }
            }
        }

        let parents = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
        match Pointwise.prepare::<C>(parents).compute_bound().stateful() {
            // GELU's gradient needs its input: the product and bias kept before it.
            OpsKind::Tracked(prep) if act == Act::Gelu => {
                let pre = B::pointwise_rows(x.clone(), weight.clone(), bias, Act::Identity);
                prep.finish((x, weight, pre.clone(), act), B::activation(pre, act))
            }
            OpsKind::Tracked(prep) => {
                let output = B::pointwise_rows(x.clone(), weight.clone(), bias, act);
                prep.finish((x, weight, output.clone(), act), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::pointwise_rows(x, weight, bias, act)),
        }
    }

    fn activation(x: FloatTensor<Self>, act: Act) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Activation;

        impl<B: Backend + GraftOps> Backward<B, 1> for Activation {
            // The output (ReLU, ReLU6) or the input (GELU).
            type State = (FloatTensor<B>, Act);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_x] = ops.parents;
                let (saved, act) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::activation_backward(saved, grad, act));
                }
            }
        }

        let parents = [x.node()];
        let x = x.into_primitive();
        match Activation.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) if act.grad_from_output() => {
                let output = B::activation(x, act);
                prep.finish((output.clone(), act), output)
            }
            OpsKind::Tracked(prep) => prep.finish((x.clone(), act), B::activation(x, act)),
            OpsKind::UnTracked(prep) => prep.finish(B::activation(x, act)),
        }
    }

    fn add_activation(a: FloatTensor<Self>, b: FloatTensor<Self>, act: Act) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AddActivation;

        impl<B: Backend + GraftOps> Backward<B, 2> for AddActivation {
            // The output (the mask of ReLU and ReLU6; identity needs nothing but is kept alike).
            type State = (FloatTensor<B>, Act);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_a, node_b] = ops.parents;
                let (output, act) = ops.state;
                let grad = B::activation_backward(output, grads.consume::<B>(&ops.node), act);
                if let Some(node) = node_a {
                    grads.register::<B>(node.id, grad.clone());
                }
                if let Some(node) = node_b {
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        let parents = [a.node(), b.node()];
        let output = B::add_activation(a.into_primitive(), b.into_primitive(), act);
        match AddActivation.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((output.clone(), act), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn activation_backward(saved: FloatTensor<Self>, grad: FloatTensor<Self>, act: Act) -> FloatTensor<Self> {
        Self::from_inner(B::activation_backward(saved.into_primitive(), grad.into_primitive(), act))
    }
}

/// Sums over every dimension but the last: the gradient of a per-channel bias. [.., C] → [C]
fn column_sums<B: Backend>(grad: FloatTensor<B>, channels: usize) -> FloatTensor<B> {
    let rows = grad.shape().num_elements() / channels;
    let rows_by_channels = B::float_reshape(grad, [rows, channels].into());
    B::float_reshape(B::float_sum_dim(rows_by_channels, 0), [channels].into())
}
