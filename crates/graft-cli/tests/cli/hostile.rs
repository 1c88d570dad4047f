//! Hostile inputs through the CLI: crafted pickles and a decompression-bomb PNG. Each must give
//! exit 2 (or a counted skip inside `fit`) with a message naming the file and what is wrong,
//! run nothing, and stay far below 2 GB of memory.

use std::io::Write;
use std::path::Path;
use std::process::Output;

use super::{assert_bad_input, json_of, reference, scratch};

// ---- crafted files --------------------------------------------------------------------------

/// BINUNICODE.
fn pstr(s: &str) -> Vec<u8> {
    let mut b = vec![b'X'];
    b.extend((s.len() as u32).to_le_bytes());
    b.extend(s.as_bytes());
    b
}

/// `module.name(arg)` as GLOBAL + REDUCE: what `pickle.dumps` writes for an object whose
/// `__reduce__` returns `(os.system, ("touch ...",))`.
fn call_via_global(module: &str, name: &str, arg: &str) -> Vec<u8> {
    let mut p = vec![0x80, 0x02, b'c'];
    p.extend(format!("{module}\n{name}\n").as_bytes());
    p.extend(pstr(arg));
    p.extend([0x85, b'R', b'.']); // TUPLE1, REDUCE, STOP
    p
}

/// The same call with protocol 4's STACK_GLOBAL (module and name as strings on the stack).
fn call_via_stack_global(module: &str, name: &str, arg: &str) -> Vec<u8> {
    let mut p = vec![0x80, 0x04];
    p.extend(pstr(module));
    p.extend(pstr(name));
    p.push(0x93); // STACK_GLOBAL
    p.extend(pstr(arg));
    p.extend([0x85, b'R', b'.']);
    p
}

/// A legacy (pre-1.6) torch file: magic, protocol and sys_info pickles, `main`, no storages.
fn legacy_file(main: &[u8]) -> Vec<u8> {
    let mut b = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec();
    b.extend(b"\x80\x02M\xe9\x03.");
    b.extend(b"\x80\x02}q\x00.");
    b.extend(main);
    b.extend(b"\x80\x02].");
    b
}

/// A zip (torch >= 1.6) checkpoint: `archive/data.pkl` plus `archive/data/<key>` entries.
fn zip_file(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pkl).unwrap();
    for (key, bytes) in storages {
        z.start_file(format!("archive/data/{key}"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

/// Pickle ints: BININT for what fits, LONG1 (9 bytes, sign bit clear) beyond.
fn pint(v: u64) -> Vec<u8> {
    if v < (1 << 31) {
        let mut b = vec![b'J'];
        b.extend((v as u32).to_le_bytes());
        b
    } else {
        let mut b = vec![0x8a, 9];
        b.extend(v.to_le_bytes());
        b.push(0);
        b
    }
}

/// A zip-format state dict `{"w": tensor}` whose one tensor, 1-D of `numel` floats, lives in
/// the storage the persistent id `('storage', FloatStorage, key, 'cpu', numel)` names.
fn state_dict_pickle(key: &str, numel: u64) -> Vec<u8> {
    let mut p = vec![0x80, 0x02, b'}'];
    p.extend(pstr("w"));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    p.extend(pstr("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(pstr(key));
    p.extend(pstr("cpu"));
    p.extend(pint(numel));
    p.extend([b't', b'Q']); // TUPLE, BINPERSID
    p.extend(pint(0)); // storage offset
    p.push(b'(');
    p.extend(pint(numel));
    p.push(b't'); // size
    p.extend([b'(']);
    p.extend(pint(1));
    p.push(b't'); // stride
    p.push(0x89); // requires_grad False
    p.extend(b"ccollections\nOrderedDict\n)R"); // backward hooks
    p.extend([b't', b'R', b's', b'.']);
    p
}

fn chelsea() -> String {
    reference("efficientnet-lite0/images/chelsea.png").display().to_string()
}

/// A PNG whose header claims `width`×`height` RGB pixels, followed by a valid but empty image
/// stream: 67 bytes that would decode to width·height·3 bytes.
pub(super) fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

// ---- running graft and measuring it ---------------------------------------------------------

/// Runs graft (test home) and returns its output and its own peak RSS in bytes.
fn graft_measured(args: &[&str], env: &[(&str, &str)]) -> (Output, u64) {
    let (out, _, rss) = super::run_measured(args, env, std::time::Duration::from_secs(600));
    (out, rss)
}

const TWO_GB: u64 = 2 << 30;

fn predict_with_weights(weights: &Path) -> (Output, u64) {
    graft_measured(&["predict", "--model", "efficientnet-lite0", "--weights", weights.to_str().unwrap(), &chelsea()], &[])
}

// ---- hostile pickles ------------------------------------------------------------------------

#[test]
fn os_system_via_reduce_in_a_zip_checkpoint_is_refused_and_never_runs() {
    let dir = scratch("hostile-os-system");
    let marker = dir.join("PWNED");
    let pkl = call_via_global("os", "system", &format!("touch {}", marker.display()));
    let file = dir.join("evil-system.pt");
    std::fs::write(&file, zip_file(&pkl, &[])).unwrap();
    let (out, _) = predict_with_weights(&file);
    assert_bad_input(&out, &["evil-system.pt", "forbidden global `os.system`"]);
    assert!(!marker.exists(), "the pickle's payload ran");
}

#[test]
fn builtins_eval_via_global_is_refused_and_never_runs() {
    let dir = scratch("hostile-eval");
    let marker = dir.join("PWNED");
    let code = format!("open({:?}, 'w')", marker.display().to_string());
    // GLOBAL in a legacy file's main pickle.
    let file = dir.join("evil-eval.pth");
    std::fs::write(&file, legacy_file(&call_via_global("builtins", "eval", &code))).unwrap();
    let (out, _) = predict_with_weights(&file);
    assert_bad_input(&out, &["evil-eval.pth", "forbidden global `builtins.eval`"]);
    // STACK_GLOBAL (protocol 4) in a zip checkpoint.
    let file = dir.join("evil-stack-eval.pt");
    std::fs::write(&file, zip_file(&call_via_stack_global("builtins", "eval", &code), &[])).unwrap();
    let (out, _) = predict_with_weights(&file);
    assert_bad_input(&out, &["evil-stack-eval.pt", "forbidden global `builtins.eval`"]);
    assert!(!marker.exists(), "the pickle's payload ran");
}

#[test]
fn persistent_id_pointing_outside_the_archive_is_refused() {
    let dir = scratch("hostile-outside");
    // A real file where `archive/data/../../outside.bin` would resolve on disk: graft must not
    // read it (storage keys name zip entries, never paths).
    std::fs::write(dir.join("outside.bin"), [0u8; 64]).unwrap();
    let key = "../../outside.bin";
    let file = dir.join("escape.pt");
    std::fs::write(&file, zip_file(&state_dict_pickle(key, 16), &[("0", &[0u8; 64])])).unwrap();
    let (out, _) = predict_with_weights(&file);
    assert_bad_input(&out, &["escape.pt", "storage `../../outside.bin`", "not in the file"]);
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 2, "graft created files: {names:?}");
}

#[test]
fn storage_larger_than_the_file_is_refused_before_allocating() {
    let dir = scratch("hostile-huge-storage");
    // Zip: the pickle declares 2^40 floats (4 TiB) for a 16-byte entry.
    let file = dir.join("huge.pt");
    std::fs::write(&file, zip_file(&state_dict_pickle("0", 1 << 40), &[("0", &[0u8; 16])])).unwrap();
    let (out, rss) = predict_with_weights(&file);
    assert_bad_input(&out, &["huge.pt", "`w` needs 4398046511104 bytes", "only 16"]);
    assert!(rss < TWO_GB, "peak RSS {rss} bytes");
    // Legacy: the same claim in the storage section's own count.
    let mut bytes = legacy_file(&state_dict_pickle("0", 1 << 40));
    bytes.truncate(bytes.len() - b"\x80\x02].".len());
    bytes.extend(b"\x80\x02]X\x01\x00\x00\x000a."); // keys: ["0"]
    bytes.extend((1u64 << 40).to_le_bytes());
    bytes.extend([0u8; 16]);
    let file = dir.join("huge.pth");
    std::fs::write(&file, bytes).unwrap();
    let (out, rss) = predict_with_weights(&file);
    assert_bad_input(&out, &["huge.pth", "storage `0` declares 1099511627776 elements", "only 16 bytes remain"]);
    assert!(rss < TWO_GB, "peak RSS {rss} bytes");
}

// ---- image bombs ----------------------------------------------------------------------------

#[test]
fn png_bomb_is_refused_by_predict_before_decoding() {
    let dir = scratch("hostile-png-bomb");
    let bomb = dir.join("bomb.png");
    let bytes = png_bomb(100_000, 100_000);
    assert!(bytes.len() < 100, "the bomb is {} bytes", bytes.len());
    std::fs::write(&bomb, bytes).unwrap();
    let (out, rss) = graft_measured(&["predict", "--json", bomb.to_str().unwrap()], &[]);
    assert_bad_input(&out, &["bomb.png", "100000×100000 is 10000000000 pixels", "over the limit of 50000000"]);
    // 30 GB if decoded; the model alone is a few hundred MB.
    assert!(rss < TWO_GB, "peak RSS {} MB", rss >> 20);
    eprintln!("predict on the PNG bomb: peak RSS {} MB", rss >> 20);
}

#[test]
fn image_pixel_limit_is_configurable() {
    // chelsea.png is 451×300 = 135300 pixels.
    let (out, _) = graft_measured(&["predict", "--max-image-pixels", "135299", &chelsea()], &[]);
    assert_bad_input(&out, &["chelsea.png", "451×300 is 135300 pixels", "over the limit of 135299"]);
    let (out, _) = graft_measured(&["predict", &chelsea()], &[("GRAFT_MAX_IMAGE_PIXELS", "100000")]);
    assert_bad_input(&out, &["chelsea.png", "over the limit of 100000"]);
    // Exactly at the limit is allowed; the flag wins over the variable.
    let (out, _) = graft_measured(&["predict", "--json", "--max-image-pixels", "135300", &chelsea()], &[("GRAFT_MAX_IMAGE_PIXELS", "100")]);
    json_of(&out);
    let (out, _) = graft_measured(&["predict", &chelsea()], &[("GRAFT_MAX_IMAGE_PIXELS", "lots")]);
    assert_bad_input(&out, &["GRAFT_MAX_IMAGE_PIXELS", "lots"]);
}

#[test]
fn png_bomb_inside_fit_is_a_counted_skip() {
    let dir = scratch("hostile-fit-bomb");
    let data = super::fit::fmnist(&dir, 4, 7);
    std::fs::write(data.join("Bag").join("bomb.png"), png_bomb(100_000, 100_000)).unwrap();
    let run = dir.join("run");
    let (out, rss) = graft_measured(&["fit", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--epochs", "1", "--json"], &[]);
    let v = json_of(&out);
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0]["file"].as_str().unwrap().ends_with("bomb.png"));
    assert!(skipped[0]["reason"].as_str().unwrap().contains("10000000000 pixels"), "{}", skipped[0]);
    assert_eq!(v["epochs"], 1);
    assert!(rss < TWO_GB, "peak RSS {} MB", rss >> 20);
}
