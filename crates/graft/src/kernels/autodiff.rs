//! Backward passes of graft's kernels, for burn's autodiff wrapper.

use burn::backend::{AutodiffBackend, Backend, TensorMetadata, tensor::FloatTensor};
use burn_autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};

use super::{DepthwiseGeometry, GraftOps};

impl<B: Backend + GraftOps, C: CheckpointStrategy> GraftOps for Autodiff<B, C> {
    fn depthwise_nhwc(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Depthwise;

        impl<B: Backend + GraftOps> Backward<B, 3> for Depthwise {
            // The input, the weight and the output, as the forward saw them.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, DepthwiseGeometry);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let (x, weight, output, geometry) = ops.state;
                let grad = B::relu6_backward(output, grads.consume::<B>(&ops.node)); // [N, H', W', C]
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
        let output = B::depthwise_nhwc(x.clone(), weight.clone(), bias.into_primitive(), geometry);
        match Depthwise.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, weight, output.clone(), geometry), output),
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

    fn pointwise_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, relu6: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Pointwise;

        impl<B: Backend + GraftOps> Backward<B, 3> for Pointwise {
            // The input, the weight, and the output when ReLU6 was applied.
            type State = (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let (x, weight, relu6_output) = ops.state;
                let mut grad = grads.consume::<B>(&ops.node); // [R, C_out]
                if let Some(output) = relu6_output {
                    grad = B::relu6_backward(output, grad);
                }
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
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        let output = B::pointwise_rows(x.clone(), weight.clone(), bias.into_primitive(), relu6);
        match Pointwise.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, weight, relu6.then(|| output.clone())), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn relu6_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::relu6_backward(output.into_primitive(), grad.into_primitive()))
    }
}

/// Sums over every dimension but the last: the gradient of a per-channel bias. [.., C] → [C]
fn column_sums<B: Backend>(grad: FloatTensor<B>, channels: usize) -> FloatTensor<B> {
    let rows = grad.shape().num_elements() / channels;
    let rows_by_channels = B::float_reshape(grad, [rows, channels].into());
    B::float_reshape(B::float_sum_dim(rows_by_channels, 0), [channels].into())
}
