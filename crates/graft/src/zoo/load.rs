//! Reading checkpoint tensors, checked by name and shape. Backbones move them into burn modules
//! through their layer table ([`super::table`]), where checkpoint names meet burn's.

use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use graft_weights::StateDict;

use crate::{GraftError, Result};

/// A loaded state dict plus what is needed to report problems with it.
pub struct WeightSource<'a> {
    pub dict: &'a StateDict,
    pub path: &'a Path,
    /// The model the weights are loaded into, for messages.
    pub model: &'a str,
    pub device: &'a Device,
}

impl WeightSource<'_> {
    /// The tensor `key` as row-major f32 data, checked against `expected`.
    pub fn data(&self, key: &str, expected: &[usize]) -> Result<&[f32]> {
        let tensor = self.dict.tensors.get(key).ok_or_else(|| GraftError::MissingTensor {
            path: self.path.to_path_buf(),
            tensor: key.to_string(),
            model: self.model.to_string(),
        })?;
        if tensor.shape != expected {
            return Err(GraftError::ShapeMismatch {
                path: self.path.to_path_buf(),
                tensor: key.to_string(),
                model: self.model.to_string(),
                expected: expected.to_vec(),
                found: tensor.shape.clone(),
            });
        }
        Ok(&tensor.data)
    }

    pub fn tensor<const D: usize>(&self, key: &str, expected: [usize; D]) -> Result<Tensor<D>> {
        let data = self.data(key, &expected)?.to_vec();
        Ok(Tensor::from_data(TensorData::new(data, expected), self.device))
    }

    fn param<const D: usize>(&self, key: &str, current: &Param<Tensor<D>>) -> Result<Param<Tensor<D>>> {
        let shape: [usize; D] = current.lazy_shape().dims();
        Ok(Param::from_tensor(self.tensor(key, shape)?))
    }

    /// A PyTorch `nn.Linear` named `prefix` (BERT's; backbones load through their layer
    /// table, see [`super::table::Table::load`]).
    pub fn linear(&self, linear: &mut Linear, prefix: &str) -> Result<()> {
        let [d_in, d_out]: [usize; 2] = linear.weight.lazy_shape().dims();
        let torch_layout = self.data(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let mut transposed = vec![0f32; d_in * d_out];
        for o in 0..d_out {
            for i in 0..d_in {
                transposed[i * d_out + o] = torch_layout[o * d_in + i];
            }
        }
        let weight = Tensor::from_data(TensorData::new(transposed, [d_in, d_out]), self.device);
        linear.weight = Param::from_tensor(weight);
        if let Some(bias) = linear.bias.as_mut() {
            *bias = self.param(&format!("{prefix}.bias"), bias)?;
        }
        Ok(())
    }
}
