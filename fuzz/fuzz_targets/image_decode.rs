//! Any bytes through graft's image decoding (format sniffing, header limits, decode, RGB
//! conversion) and the model preprocessing that follows it. The limit is lowered so that the
//! fuzzer explores refusals as well as successful decodes without spending its time on
//! legitimately large images.
#![no_main]

use std::path::Path;

use graft::data::image::{decode_bytes, ImageLimits, Preprocess};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits { max_pixels: 4_000_000 };
    if let Ok(img) = decode_bytes(Path::new("fuzz-input"), data, &limits) {
        let pre = Preprocess::centre_square(32, [127.0; 3], [64.0; 3]);
        let _ = pre.apply(&img);
    }
});
