//! Help texts built from the library's registries (a leaf module: the argument structs of
//! `cli.rs` and of the commands read it, it reads only the library).

/// `--arch`'s help: the architectures of the registry that take the user's own weights.
pub(crate) fn arch_help() -> String {
    format!("{} [default: none: --model's architecture]", arch_sentence())
}

/// The architectures of the registry graft builds from a user's own weights, as one sentence.
pub(crate) fn arch_sentence() -> String {
    format!(
        "Architecture for your own weights (with --weights FILE: a torchvision state dict as zip .pth or safetensors; a Keras .h5 or Caffe .caffemodel loads into the architecture's _keras or _caffe flavour, told by its layer names): {}.",
        graft::zoo::user_archs().join(", ")
    )
}
