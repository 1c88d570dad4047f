//! `graft serve`: a child process on a free loopback port, spoken to in plain HTTP/1.1 over
//! `TcpStream`. Its answers must equal `graft predict --run RUN --json` on the same files
//! (probabilities within 1e-5) under 50 concurrent requests; oversized bodies get 413, a
//! decompression-bomb PNG 422 naming it, and the server keeps serving; SIGTERM ends it, with
//! exit status 0, within 2 s, after answering the request in flight.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fit::fmnist;
use super::{graft, json_of, scratch, test_home};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A running `graft serve`, killed if a test ends without stopping it.
struct Server {
    child: Child,
    addr: String,
    stderr: PathBuf,
}

impl Server {
    /// Starts `graft serve --run RUN --addr 127.0.0.1:0 --json EXTRA…` under `home` and reads
    /// the bound address from its first line (printed once the model is loaded).
    fn start(home: &Path, run: &Path, extra: &[&str]) -> Server {
        let stderr = run.with_extension("serve.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["serve", "--run", s(run), "--addr", "127.0.0.1:0", "--json"])
            .args(extra)
            .env("GRAFT_HOME", home)
            .env_remove("GRAFT_DEVICE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start graft serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
        let first: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("first line `{line}` is not JSON ({e}); stderr: {}", log()));
        let addr = first["listening"].as_str().unwrap_or_else(|| panic!("no `listening` in {first}")).to_string();
        assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
        Server { child, addr, stderr }
    }

    fn request(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Response {
        request(&self.addr, method, path, content_type, body)
    }

    /// POSTs `files` to /predict as one multipart body, each part named by its file name.
    fn upload(&self, path: &str, files: &[(&str, &[u8])]) -> Response {
        let (content_type, body) = multipart(files);
        self.request("POST", path, Some(&content_type), &body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Response {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("status {}: body is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`). Write errors are ignored:
/// a server refusing a body by its Content-Length answers before reading it.
fn request(addr: &str, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(t) = content_type {
        head.push_str(&format!("Content-Type: {t}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
    read_response(&mut stream)
}

/// Reads a whole response (the server closes the connection after it).
fn read_response(stream: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    // A reset after the answer (the server closing with a body left unread) loses nothing read.
    if raw.is_empty() {
        panic!("no response: {read:?}");
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no end of headers in {}", String::from_utf8_lossy(&raw)));
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = headers.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status line: {headers}"));
    Response { status, headers, body: raw[split + 4..].to_vec() }
}

/// A multipart/form-data body with one file part per `(name, bytes)`: its content type and bytes.
fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "graft-test-boundary-7d41";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend(*bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Every image file below `folder`'s class folders, sorted.
fn images_below(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder).unwrap().flat_map(|c| std::fs::read_dir(c.unwrap().path()).unwrap()).map(|f| f.unwrap().path()).collect();
    files.sort();
    files
}

/// `served`'s top classes equal `expected`'s (`predict --json`'s): same classes in the same
/// order, probabilities within 1e-5.
fn assert_same_top(served: &Value, expected: &Value, what: &str) {
    let (a, b) = (served.as_array().unwrap(), expected.as_array().unwrap());
    assert_eq!(a.len(), b.len(), "{what}: served {served}, predict {expected}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x["class"], &x["label"]), (&y["class"], &y["label"]), "{what}: served {served}, predict {expected}");
        let (p, q) = (x["prob"].as_f64().unwrap(), y["prob"].as_f64().unwrap());
        assert!((p - q).abs() <= 1e-5, "{what}: probability {p} served, {q} from predict");
    }
}

#[test]
fn serve_answers_as_predict_under_concurrency_refuses_hostile_bodies_and_stops_on_sigterm() {
    let dir = scratch("serve-image");
    let train = fmnist(&dir.join("train"), 4, 1);
    let test = fmnist(&dir.join("test"), 3, 2);
    let run = dir.join("run");
    json_of(&graft(&["fit", "--data", s(&train), "--out", s(&run), "--epochs", "1", "--val-split", "0", "--json"]));
    let files = images_below(&test);
    assert_eq!(files.len(), 9);
    let mut args = vec!["predict", "--run", s(&run), "--top", "3", "--json"];
    args.extend(files.iter().map(|f| s(f)));
    let predicted = json_of(&graft(&args));
    let expected: BTreeMap<String, Value> = predicted["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (Path::new(p["file"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().to_string(), p["top"].clone()))
        .collect();
    assert_eq!(expected.len(), 9, "{predicted}");
    let bytes: Vec<(String, Vec<u8>)> = files.iter().map(|f| (f.file_name().unwrap().to_str().unwrap().to_string(), std::fs::read(f).unwrap())).collect();

    let server = Server::start(test_home(), &run, &["--max-batch", "8"]);

    // A second server on the same port is refused at once, naming the flag.
    let busy = graft(&["serve", "--run", s(&run), "--addr", &server.addr]);
    super::assert_bad_input(&busy, &["--addr", &server.addr, "cannot listen"]);

    let health = server.request("GET", "/health", None, b"");
    assert_eq!(health.status, 200, "{}", String::from_utf8_lossy(&health.body));
    let health = health.json();
    assert_eq!(health["ok"], true);
    assert_eq!(health["kind"], "image");
    assert_eq!(health["classes"], serde_json::json!(["Bag", "Sneaker", "Trouser"]));
    assert_eq!(Path::new(health["run"].as_str().unwrap()), run);
    let page = server.request("GET", "/", None, b"");
    assert_eq!(page.status, 200);
    assert!(page.headers.to_ascii_lowercase().contains("content-type: text/html"), "{}", page.headers);
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("<form") && html.contains("type=\"file\"") && html.contains("fetch('predict'"), "{html}");
    assert!(!html.contains("src=") && !html.contains("<link") && !html.contains("http"), "the page loads nothing from elsewhere: {html}");

    // 50 concurrent requests: raw bodies, one-file and two-file multipart uploads.
    let started = Instant::now();
    let answers: Vec<(Vec<String>, Response)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (server, bytes) = (&server, &bytes);
                scope.spawn(move || {
                    let (a, b) = (&bytes[i % 9], &bytes[(i + 4) % 9]);
                    match i % 3 {
                        0 => (vec!["body".to_string()], server.request("POST", "/predict?top=3", Some("image/png"), &a.1)),
                        1 => (vec![a.0.clone()], server.upload("/predict?top=3", &[(&a.0, &a.1)])),
                        _ => (vec![a.0.clone(), b.0.clone()], server.upload("/predict?top=3", &[(&a.0, &a.1), (&b.0, &b.1)])),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let mut images = 0;
    for (i, (names, response)) in answers.iter().enumerate() {
        assert_eq!(response.status, 200, "request {i}: {}", String::from_utf8_lossy(&response.body));
        let v = response.json();
        assert_eq!(v["kind"], "image");
        assert_eq!(v["skipped"], serde_json::json!([]));
        let predictions = v["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), names.len(), "request {i}: {v}");
        let sent = if names[0] == "body" { vec![bytes[i % 9].0.clone()] } else { names.clone() };
        for ((p, name), file) in predictions.iter().zip(names).zip(&sent) {
            assert_eq!(p["file"].as_str(), Some(name.as_str()), "request {i}: {v}");
            assert_same_top(&p["top"], &expected[file], &format!("request {i}, {file}"));
            images += 1;
        }
    }
    // The worker ran them in batches: fewer forward batches than requests.
    let health = server.request("GET", "/health", None, b"").json();
    let (batches, inputs) = (health["batches"].as_u64().unwrap(), health["inputs"].as_u64().unwrap());
    assert_eq!(inputs, images);
    assert!(batches < 50, "50 concurrent requests took {batches} batches: none were batched together");
    eprintln!("serve: 50 concurrent requests ({images} images) in {elapsed:?}, {batches} batches");

    // `?top=` is checked; JSON to an image run is refused naming what the run reads.
    let r = server.request("POST", "/predict?top=0", Some("image/png"), &bytes[0].1);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("invalid top `0`"));
    let r = server.request("POST", "/predict", Some("application/json"), br#"{"texts": ["hello"]}"#);
    assert_eq!(r.status, 415);
    assert!(r.json()["error"].as_str().unwrap().contains("this run (image) classifies images"), "{}", r.json());
    assert_eq!(server.request("GET", "/nowhere", None, b"").status, 404);

    // Oversized: by Content-Length (answered unread), and without one (chunked, cut off while
    // read); then a normal request is still answered.
    let big = vec![0u8; (32 << 20) + 1];
    let r = server.request("POST", "/predict", Some("image/png"), &big);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"].as_str().unwrap().contains("over the limit of 33554432 bytes (--max-body-bytes)"), "{}", r.json());
    let r = chunked_post(&server.addr, "/predict", &big);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));

    // A decompression bomb (67 bytes claiming 100000×100000 pixels) is refused by its header,
    // naming the part; beside a good image it is listed as skipped; the server keeps serving.
    let bomb = super::hostile::png_bomb(100_000, 100_000);
    let r = server.upload("/predict", &[("bomb.png", &bomb)]);
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let error = r.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("bomb.png") && error.contains("100000×100000 is 10000000000 pixels, over the limit"), "{error}");
    let r = server.request("POST", "/predict", Some("image/png"), &bomb);
    assert_eq!(r.status, 422);
    assert!(r.json()["error"].as_str().unwrap().starts_with("body: cannot read image: 100000×100000"), "{}", r.json());
    let r = server.upload("/predict?top=3", &[(&bytes[1].0, &bytes[1].1), ("bomb.png", &bomb)]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["predictions"].as_array().unwrap().len(), 1);
    assert_same_top(&v["predictions"][0]["top"], &expected[&bytes[1].0], "beside the bomb");
    assert_eq!(v["skipped"][0]["file"], "bomb.png");
    let r = server.request("POST", "/predict?top=3", Some("image/png"), &bytes[2].1);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_same_top(&r.json()["predictions"][0]["top"], &expected[&bytes[2].0], "after the bomb");

    // SIGTERM with a request in flight (its body half sent): the request is answered, and the
    // process exits 0 within 2 s of the signal.
    let (content_type, body) = multipart(&[(&bytes[3].0, &bytes[3].1)]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!("POST /predict?top=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut server = server;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(&body[body.len() / 2..]).unwrap();
    let r = read_response(&mut stream);
    assert_eq!(r.status, 200, "the request in flight at SIGTERM: {}", String::from_utf8_lossy(&r.body));
    assert_same_top(&r.json()["predictions"][0]["top"], &expected[&bytes[3].0], "in flight at SIGTERM");
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(2), "graft serve still running 2 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("serve: exited {:?} after SIGTERM", signalled.elapsed());
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM; stderr: {}", std::fs::read_to_string(&server.stderr).unwrap_or_default());
    assert!(TcpStream::connect(&server.addr).is_err(), "the port is closed after shutdown");
}

/// POSTs `body` with chunked transfer encoding (no Content-Length), 1 MiB a chunk.
fn chunked_post(addr: &str, path: &str, body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut sent = stream.write_all(head.as_bytes());
    for chunk in body.chunks(1 << 20) {
        if sent.is_err() {
            break;
        }
        sent = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).and_then(|()| stream.write_all(chunk)).and_then(|()| stream.write_all(b"\r\n"));
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    read_response(&mut stream)
}

/// `predict --run RUN --top 3 --json ARGS…`: each prediction's `top`, in order.
fn predict_tops(run: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["predict", "--run", s(run), "--top", "3", "--json"];
    all.extend_from_slice(args);
    let p = json_of(&graft(&all));
    p["predictions"].as_array().unwrap().iter().map(|p| p["top"].clone()).collect()
}

#[test]
fn serve_reads_adapt_mlp_and_text_runs_as_predict_does() {
    use super::transfer::import;
    let dir = scratch("serve-kinds");
    let source = import("mnist", "train", 6, 1, &dir.join("source"));
    let target = import("usps", "train", 4, 2, &dir.join("target"));
    let test = import("usps", "test", 1, 3, &dir.join("test"));
    let adapted = dir.join("adapt");
    json_of(&graft(&[
        "adapt", "--method", "dann", "--source", s(&source), "--target", s(&target), "--out", s(&adapted),
        "--epochs", "1", "--iters-per-epoch", "4", "--batch-size", "16", "--seed", "3", "--json",
    ]));
    let mlp = dir.join("mlp");
    let f = json_of(&graft(&["fit", "--arch", "mlp:16", "--data", s(&source), "--val-split", "0", "--epochs", "1", "--out", s(&mlp), "--json"]));
    assert_eq!(f["kind"], "mlp");
    let files: Vec<PathBuf> = images_below(&test).into_iter().take(4).collect();
    let parts: Vec<(String, Vec<u8>)> = files.iter().map(|f| (f.file_name().unwrap().to_str().unwrap().to_string(), std::fs::read(f).unwrap())).collect();
    let parts: Vec<(&str, &[u8])> = parts.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    for (run, kind) in [(&adapted, "adapt"), (&mlp, "mlp")] {
        let expected = predict_tops(run, &files.iter().map(|f| s(f)).collect::<Vec<_>>());
        let server = Server::start(test_home(), run, &[]);
        let r = server.upload("/predict?top=3", &parts);
        assert_eq!(r.status, 200, "{kind}: {}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["kind"], kind);
        let predictions = v["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 4, "{v}");
        for ((p, e), (name, _)) in predictions.iter().zip(&expected).zip(&parts) {
            assert_eq!(p["file"].as_str(), Some(*name));
            assert_same_top(&p["top"], e, &format!("{kind} run, {name}"));
        }
    }

    // A text run: JSON texts, a text/plain body and .txt parts answer as `predict --text`; an
    // image is refused naming what the run reads.
    super::text::minilm();
    let sms = dir.join("sms.csv");
    super::text::import_csv("sms-spam", 10, &sms);
    let text_run = dir.join("text");
    json_of(&graft(&["fit", "--model", "minilm-l6", "--data", s(&sms), "--out", s(&text_run), "--head", "logistic", "--val-split", "0", "--json"]));
    let (spam, ham) = ("WINNER!! Claim your free £900 prize now, call 09061701461", "Ok lar, I'll see you at home after work");
    let expected = predict_tops(&text_run, &["--text", spam, "--text", ham]);
    let server = Server::start(test_home(), &text_run, &[]);
    assert_eq!(server.request("GET", "/health", None, b"").json()["input"], "texts");
    let body = serde_json::json!({"texts": [spam, ham]}).to_string();
    let r = server.request("POST", "/predict?top=3", Some("application/json"), body.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["kind"], "text");
    assert_eq!(v["predictions"][1]["text"], ham);
    for (p, e) in v["predictions"].as_array().unwrap().iter().zip(&expected) {
        assert_same_top(&p["top"], e, "JSON texts");
    }
    let r = server.request("POST", "/predict?top=3", Some("text/plain; charset=utf-8"), spam.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_same_top(&r.json()["predictions"][0]["top"], &expected[0], "text/plain");
    let r = server.upload("/predict?top=3", &[("ham.txt", ham.as_bytes())]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["predictions"][0]["file"], "ham.txt");
    assert_same_top(&r.json()["predictions"][0]["top"], &expected[1], "a .txt part");
    for r in [server.request("POST", "/predict", Some("image/png"), parts[0].1), server.upload("/predict", &parts[..1])] {
        assert_eq!(r.status, 415, "{}", String::from_utf8_lossy(&r.body));
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains("this run (text) classifies texts"), "{error}");
    }
    let r = server.request("POST", "/predict", Some("application/json"), br#"{"text": "no list"}"#);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains(r#"expected {"texts""#));
}
