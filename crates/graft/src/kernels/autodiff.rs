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
    fn depthwise_nhwc(x: FloatTensor<Self>, weight: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Depthwise;

        impl<B: Backend + GraftOps> Backward<B, 2> for Depthwise {
            // The input and the weight, as the forward saw them.
            type State = (FloatTensor<B>, FloatTensor<B>, DepthwiseGeometry);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight, geometry) = ops.state;
                if let Some(node) = node_weight {
                    grads.register::<B>(node.id, B::depthwise_nhwc_weight_grad(x, grad.clone(), geometry));
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::depthwise_nhwc_input_grad(grad, weight, geometry));
                }
            }
        }

        let parents = [x.node(), weight.node()];
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        let output = B::depthwise_nhwc(x.clone(), weight.clone(), geometry);
        match Depthwise.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, weight, geometry), output),
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

    fn bias_relu6(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct BiasRelu6;

        impl<B: Backend + GraftOps> Backward<B, 2> for BiasRelu6 {
            // The output: the gradient passes where it lies strictly inside (0, 6).
            type State = FloatTensor<B>;

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_x, node_bias] = ops.parents;
                let grad = B::relu6_backward(ops.state, grads.consume::<B>(&ops.node)); // [R, C]
                if let Some(node) = node_bias {
                    let channels = grad.shape()[1];
                    let bias_grad = B::float_reshape(B::float_sum_dim(grad.clone(), 0), [channels].into()); // [C]
                    grads.register::<B>(node.id, bias_grad);
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        let parents = [x.node(), bias.node()];
        let output = B::bias_relu6(x.into_primitive(), bias.into_primitive());
        match BiasRelu6.prepare::<C>(parents).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(output.clone(), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn relu6_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::relu6_backward(output.into_primitive(), grad.into_primitive()))
    }
}
