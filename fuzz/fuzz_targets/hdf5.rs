//! Any bytes through graft's HDF5 readers: the Keras `.h5` weight loader (zoo/keras.rs) and
//! the USPS dataset reader (data/usps.rs), both on the `hdf5-reader` crate.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz-input.h5");
    let _ = graft::zoo::keras::keras_h5_from_bytes(path, data);
    let _ = graft::data::usps::usps_from_bytes(path, data.to_vec(), "train");
});
