//! `graft serve`: a run's model over HTTP.
//!
//! One model worker thread owns the [`Predictor`] (burn modules stay on the thread that built
//! them). HTTP requests are read and checked on a single-threaded tokio runtime (axum), queued
//! to the worker as jobs, and answered through a oneshot channel each. The worker takes the
//! first queued job, gathers what else arrives within `--batch-wait-ms` (up to `--max-batch`
//! inputs), runs them together, and answers every job from the one result.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use graft::data::folder::ImageBytes;
use graft::manifest::InputKind;
use graft::predictor::Predictor;
use graft::report::Silent;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::cli::ServeArgs;
use crate::output::Output;

/// How long in-flight requests may run on after SIGTERM or Ctrl-C before the server stops
/// anyway: the process is gone within 2 s of the signal.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Most request-body bytes held at once, all requests together, in MiB (raised to one
/// `--max-body-bytes` body when that is larger): a request waits for room before its body is
/// read, so many concurrent uploads queue instead of exhausting memory.
const BODY_BUDGET_MIB: u64 = 256;

/// Longest a request may take to send its body: a client trickling a large body holds its
/// share of [`BODY_BUDGET_MIB`] at most this long (answered 408).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// MiB of the body budget a body of `bytes` takes (at least 1).
fn budget_mib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1 << 20).max(1)).unwrap_or(u32::MAX)
}

pub fn run(args: ServeArgs, out: &Output) -> anyhow::Result<()> {
    // Every flag is used below: a new one fails to compile until it is.
    let ServeArgs { device, run, addr, top, max_batch, batch_wait_ms, max_body_bytes, max_inputs, allow_unfinished } = args;
    anyhow::ensure!(top >= 1, "--top must be at least 1");
    anyhow::ensure!(max_batch >= 1, "--max-batch must be at least 1");
    anyhow::ensure!(max_inputs >= 1, "--max-inputs must be at least 1");
    anyhow::ensure!(max_body_bytes >= 1, "--max-body-bytes must be at least 1");
    graft::limits::check_setting("--max-batch", max_batch, graft::limits::MAX_BATCH_SIZE, "graft::limits::MAX_BATCH_SIZE")?;
    anyhow::ensure!(
        max_body_bytes <= graft::limits::MAX_IMAGE_FILE_BYTES,
        "--max-body-bytes {max_body_bytes} is over the limit of {} (graft::limits::MAX_IMAGE_FILE_BYTES)",
        graft::limits::MAX_IMAGE_FILE_BYTES
    );
    let max_body = usize::try_from(max_body_bytes).unwrap_or(usize::MAX);
    let device = device.device()?;
    // Bound first, so a busy port is said at once rather than after loading the model;
    // connections made while it loads wait in the backlog.
    let listener = std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("--addr {addr}: cannot listen: {e}"))?;
    listener.set_nonblocking(true)?;

    // The worker loads the run on its own thread and says when it is ready (or why not).
    let (jobs, queue) = mpsc::channel::<Job>();
    let (ready_tx, ready) = mpsc::channel::<anyhow::Result<Facts>>();
    let worker_run = run.clone();
    let wait = Duration::from_millis(batch_wait_ms);
    let counts = Arc::new(Counts::default());
    let worker_counts = counts.clone();
    let worker = std::thread::Builder::new().name("graft-model".into()).spawn(move || {
        let predictor = match Predictor::load(&worker_run, &graft::zoo::graft_home(), None, allow_unfinished, &crate::reporter::TermReporter::new(), &device) {
            Ok(p) => p,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        let facts = Facts { kind: predictor.kind(), input: predictor.input(), classes: predictor.classes().to_vec(), tasks: predictor.tasks().to_vec() };
        if ready_tx.send(Ok(facts)).is_ok() {
            work(&predictor, &queue, max_batch, wait, &worker_counts, &device);
        }
    })?;
    let facts = ready.recv().map_err(|_| anyhow::anyhow!("{}: the model worker stopped while loading the run", run.display()))??;

    let bodies = tokio::sync::Semaphore::new(BODY_BUDGET_MIB.max(u64::from(budget_mib(max_body_bytes))) as usize);
    let state = Arc::new(Served { run, facts, jobs, counts, bodies, top, max_inputs, max_body });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let graceful = runtime.block_on(serve(listener, state, out))?;
    // Dropping the runtime drops every connection and with it the last job sender: the worker
    // finishes its batch and stops. After a forced stop it may still be computing; the process
    // ends without waiting for it.
    drop(runtime);
    if graceful {
        worker.join().map_err(|_| anyhow::anyhow!("the model worker failed"))?;
    }
    Ok(())
}

/// What the HTTP side knows of the run.
struct Facts {
    kind: &'static str,
    input: InputKind,
    classes: Vec<String>,
    tasks: Vec<graft::train::text::TaskHead>,
}

/// The server's shared state.
struct Served {
    run: PathBuf,
    facts: Facts,
    jobs: mpsc::Sender<Job>,
    counts: Arc<Counts>,
    /// The body budget ([`BODY_BUDGET_MIB`]), one permit per MiB.
    bodies: tokio::sync::Semaphore,
    top: usize,
    max_inputs: usize,
    max_body: usize,
}

/// What the model worker has run since the start (shown by `/health`).
#[derive(Default)]
struct Counts {
    /// Batches run (each up to `--max-batch` inputs per forward pass).
    batches: AtomicU64,
    /// Inputs run, readable or not.
    inputs: AtomicU64,
}

/// One request's inputs, queued to the model worker.
struct Job {
    inputs: Inputs,
    reply: oneshot::Sender<Answer>,
}

enum Inputs {
    Images(Vec<ImageBytes>),
    Texts(Vec<String>),
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::Images(i) => i.len(),
            Inputs::Texts(t) => t.len(),
        }
    }
}

/// Per input, its class probabilities or why it could not be read; or why the whole batch
/// failed.
type Answer = Result<Vec<Result<Vec<f32>, String>>, String>;

/// The model worker: takes the first queued job, gathers more until `max_batch` inputs or
/// `wait` after the first, runs them together; until every job sender is gone.
fn work(predictor: &Predictor, queue: &mpsc::Receiver<Job>, max_batch: usize, wait: Duration, counts: &Counts, device: &burn::tensor::Device) {
    while let Ok(first) = queue.recv() {
        let deadline = Instant::now() + wait;
        let mut n = first.inputs.len();
        let mut batch = vec![first];
        while n < max_batch {
            match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(job) => {
                    n += job.inputs.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        // Counted before the answers go out, so a client that has its answer sees its batch.
        counts.batches.fetch_add(1, Ordering::Relaxed);
        counts.inputs.fetch_add(n as u64, Ordering::Relaxed);
        answer(predictor, batch, max_batch, device);
    }
}

/// Runs a batch of jobs as one list of inputs and sends each job its share.
fn answer(predictor: &Predictor, batch: Vec<Job>, max_batch: usize, device: &burn::tensor::Device) {
    let mut images = Vec::new();
    let mut texts = Vec::new();
    let mut replies = Vec::new();
    for job in batch {
        let n = job.inputs.len();
        match job.inputs {
            Inputs::Images(i) => images.extend(i),
            Inputs::Texts(t) => texts.extend(t),
        }
        replies.push((n, job.reply));
    }
    // A decoder bug is already an unreadable image; this keeps the worker alive through any
    // other panic in the model.
    let rows = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> graft::Result<Vec<Result<Vec<f32>, String>>> {
        if !texts.is_empty() {
            return Ok(predictor.predict_texts(&texts, &Silent, device)?.into_iter().map(Ok).collect());
        }
        let (probs, skipped) = predictor.predict_image_bytes(&images, max_batch, device)?;
        // `skipped` lists the unreadable images in input order.
        let mut reasons = skipped.into_iter().map(|s| s.reason);
        Ok(probs.into_iter().map(|p| p.ok_or_else(|| reasons.next().unwrap_or_default())).collect())
    }));
    let rows = match rows {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the model failed on this batch".to_string()),
    };
    let mut at = 0;
    for (n, reply) in replies {
        // A client that went away no longer waits for its answer.
        let _ = reply.send(rows.as_ref().map(|r| r[at..at + n].to_vec()).map_err(Clone::clone));
        at += n;
    }
}

/// Serves until SIGTERM or Ctrl-C; `Ok(true)` when every in-flight request finished within
/// [`SHUTDOWN_GRACE`], `Ok(false)` when the server stopped without them.
async fn serve(listener: std::net::TcpListener, state: Arc<Served>, out: &Output) -> anyhow::Result<bool> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let bound = listener.local_addr()?;
    let line = if out.json { json!({"listening": bound.to_string()}).to_string() } else { format!("serving {} on http://{bound}", state.run.display()) };
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    }
    let max_body = state.max_body;
    let app = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/predict", post(predict))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);

    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = stopping.clone();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("stopping: finishing the requests in flight");
        signalled.notify_one();
    });
    tokio::select! {
        served = server => {
            served?;
            Ok(true)
        }
        _ = async { stopping.notified().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            eprintln!("stopped with requests still in flight after {} ms", SHUTDOWN_GRACE.as_millis());
            Ok(false)
        }
    }
}

/// A JSON response.
fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A JSON error response: `{"error": message}`.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, &json!({"error": message.into()}))
}

async fn not_found() -> Response {
    refuse(StatusCode::NOT_FOUND, "no such page: graft serve answers GET /, GET /health and POST /predict")
}

async fn health(State(state): State<Arc<Served>>) -> Response {
    let f = &state.facts;
    let (batches, inputs) = (state.counts.batches.load(Ordering::Relaxed), state.counts.inputs.load(Ordering::Relaxed));
    json_response(StatusCode::OK, &json!({"ok": true, "run": state.run, "kind": f.kind, "input": input_name(f.input), "classes": f.classes, "batches": batches, "inputs": inputs}))
}

fn input_name(input: InputKind) -> &'static str {
    match input {
        InputKind::Images => "images",
        InputKind::Texts => "texts",
    }
}

/// `GET /`: one self-contained page that uploads files (or, for a text run, a text) to
/// `/predict` and shows the answer.
async fn page(State(state): State<Arc<Served>>) -> Response {
    let texts = state.facts.input == InputKind::Texts;
    let field = if texts {
        r#"<textarea id="text" rows="4" cols="60" placeholder="a text to classify"></textarea>"#
    } else {
        r#"<input id="files" type="file" accept="image/*" multiple>"#
    };
    let html = PAGE
        .replace("{run}", &html_escape(&state.run.display().to_string()))
        .replace("{kind}", state.facts.kind)
        .replace("{classes}", &html_escape(&state.facts.classes.join(", ")))
        .replace("{field}", field)
        .replace("{texts}", if texts { "true" } else { "false" });
    let mut response = html.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>graft serve</title>
<style>body{font:15px system-ui,sans-serif;margin:2em;max-width:50em}pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}</style>
</head><body>
<h1>graft serve</h1>
<p>Run <code>{run}</code> ({kind}); classes: {classes}.</p>
<form id="form">{field} <button>Predict</button></form>
<pre id="out"></pre>
<script>
document.getElementById('form').onsubmit = async (e) => {
  e.preventDefault();
  const out = document.getElementById('out');
  let body, headers = {};
  if ({texts}) {
    body = JSON.stringify({texts: [document.getElementById('text').value]});
    headers['Content-Type'] = 'application/json';
  } else {
    body = new FormData();
    for (const f of document.getElementById('files').files) body.append('image', f, f.name);
  }
  out.textContent = '…';
  const r = await fetch('predict', {method: 'POST', body, headers});
  out.textContent = r.status + '\n' + JSON.stringify(await r.json(), null, 2);
};
</script>
</body></html>
"#;

/// `POST /predict[?top=K]`: images (multipart parts or the raw body) or, for a text run,
/// texts (`{"texts": [...]}`, text/plain, or multipart parts); answers as `predict --json`.
async fn predict(State(state): State<Arc<Served>>, request: Request) -> Response {
    match predict_inner(&state, request).await {
        Ok(r) | Err(r) => r,
    }
}

async fn predict_inner(state: &Served, request: Request) -> Result<Response, Response> {
    let top = top_of(request.uri().query(), state.top)?;
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > state.max_body as u64) {
        return Err(too_large(len, state.max_body));
    }
    // Room for the body (a chunked one may reach the limit), held until the answer is built.
    let need = budget_mib(declared.unwrap_or(state.max_body as u64));
    let _room = state.bodies.acquire_many(need).await.map_err(|_| refuse(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"))?;
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let texts = state.facts.input == InputKind::Texts;
    let wants = |given: &str| {
        let (has, send) = if texts {
            ("texts", r#"JSON {"texts": [...]}, text/plain, or multipart/form-data parts of text"#)
        } else {
            ("images", "image bytes as the body or multipart/form-data file parts")
        };
        refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("{given}, but this run ({}) classifies {has}: send {send}", state.facts.kind))
    };
    let (parts, body) = request.into_parts();
    let reading = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(Request::from_parts(parts.clone(), body), &()));
    let read = reading.await.map_err(|_| refuse(StatusCode::REQUEST_TIMEOUT, format!("the body took over {} s to arrive", BODY_READ_TIMEOUT.as_secs())))?;
    let bytes = read.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(0, state.max_body)
        } else {
            refuse(e.status(), format!("cannot read the request body: {e}"))
        }
    })?;
    let inputs = if content_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(Request::from_parts(parts, Body::from(bytes)), &()).await.map_err(|e| refuse(StatusCode::BAD_REQUEST, e.body_text()))?;
        read_parts(multipart, texts, state.max_inputs, &wants).await?
    } else if content_type.starts_with("application/json") {
        if !texts {
            return Err(wants("JSON"));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")))?;
        let list = value.get("texts").and_then(Value::as_array).ok_or_else(|| refuse(StatusCode::BAD_REQUEST, r#"expected {"texts": ["a text", ...]}"#))?;
        let mut texts = Vec::with_capacity(list.len().min(state.max_inputs));
        for (i, t) in list.iter().enumerate() {
            let t = t.as_str().ok_or_else(|| refuse(StatusCode::BAD_REQUEST, format!("texts[{i}] is not a string")))?;
            texts.push((format!("texts[{i}]"), t.to_string()));
        }
        Parsed::Texts(texts)
    } else if content_type.starts_with("text/plain") {
        if !texts {
            return Err(wants("text/plain"));
        }
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| refuse(StatusCode::BAD_REQUEST, "the text/plain body is not UTF-8"))?;
        Parsed::Texts(vec![("body".to_string(), text)])
    } else {
        if texts {
            let given = if content_type.is_empty() { "a body with no Content-Type".to_string() } else { content_type.clone() };
            return Err(wants(&given));
        }
        Parsed::Images(vec![ImageBytes { name: "body".into(), bytes: bytes.to_vec() }])
    };
    let n = inputs.len();
    if n == 0 {
        return Err(refuse(StatusCode::BAD_REQUEST, if texts { "no texts in the request" } else { "no images in the request (an empty body, or no file parts)" }));
    }
    if n > state.max_inputs {
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("{n} inputs in one request, over the limit of {} (--max-inputs)", state.max_inputs)));
    }
    let (names, job_inputs) = match inputs {
        Parsed::Images(images) => (images.iter().map(|i| json!(i.name)).collect::<Vec<_>>(), Inputs::Images(images)),
        Parsed::Texts(texts) => {
            let names = texts.iter().map(|(name, t)| if name.starts_with("texts[") { json!({"text": t}) } else { json!({"file": name, "text": t}) }).collect();
            (names, Inputs::Texts(texts.into_iter().map(|(_, t)| t).collect()))
        }
    };
    let (reply, answer) = oneshot::channel();
    state.jobs.send(Job { inputs: job_inputs, reply }).map_err(|_| refuse(StatusCode::SERVICE_UNAVAILABLE, "the model worker has stopped"))?;
    let rows = answer
        .await
        .map_err(|_| refuse(StatusCode::SERVICE_UNAVAILABLE, "the model worker stopped before answering"))?
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("the model failed: {e}")))?;
    let f = &state.facts;
    let mut predictions = Vec::new();
    let mut skipped = Vec::new();
    for (name, row) in names.into_iter().zip(rows) {
        match row {
            Ok(row) if texts => predictions.push(super::predict::text_prediction(name, &row, &f.classes, &f.tasks, top)),
            Ok(row) => predictions.push(json!({"file": name, "top": super::predict::top_k(&row, top, |c| &f.classes[c])})),
            Err(reason) => skipped.push(json!({"file": name, "reason": reason})),
        }
    }
    if predictions.is_empty() {
        let first = &skipped[0];
        let message = format!("{}: cannot read image: {}", first["file"].as_str().unwrap_or("?"), first["reason"].as_str().unwrap_or(""));
        return Err(json_response(StatusCode::UNPROCESSABLE_ENTITY, &json!({"error": message, "skipped": skipped})));
    }
    Ok(json_response(StatusCode::OK, &json!({"run": state.run, "kind": f.kind, "predictions": predictions, "skipped": skipped})))
}

/// A request's inputs, each with the name its answer gives it.
enum Parsed {
    Images(Vec<ImageBytes>),
    Texts(Vec<(String, String)>),
}

impl Parsed {
    fn len(&self) -> usize {
        match self {
            Parsed::Images(i) => i.len(),
            Parsed::Texts(t) => t.len(),
        }
    }
}

/// The parts of a multipart body: images, or for a text run texts (an image part is refused).
/// A part is named by its file name, else its field name, else `part N`.
async fn read_parts(mut multipart: Multipart, texts: bool, max_inputs: usize, wants: &(dyn Fn(&str) -> Response + Sync)) -> Result<Parsed, Response> {
    let bad = |e: axum::extract::multipart::MultipartError| refuse(e.status(), format!("malformed multipart body: {}", e.body_text()));
    let mut images = Vec::new();
    let mut read = Vec::new();
    let mut i = 0;
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        i += 1;
        if i > max_inputs {
            return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("more than {max_inputs} parts in one request, over the limit (--max-inputs)")));
        }
        let name = field.file_name().or(field.name()).filter(|n| !n.is_empty()).map(String::from).unwrap_or_else(|| format!("part {i}"));
        let is_image = field.content_type().is_some_and(|t| t.starts_with("image/")) || graft::data::folder::is_image_file(Path::new(&name));
        let bytes = field.bytes().await.map_err(bad)?;
        if texts {
            if is_image {
                return Err(wants(&format!("{name}: an image")));
            }
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("{name}: not UTF-8 text")))?;
            read.push((name, text));
        } else {
            images.push(ImageBytes { name: name.into(), bytes: bytes.to_vec() });
        }
    }
    Ok(if texts { Parsed::Texts(read) } else { Parsed::Images(images) })
}

/// `?top=K` (the other query parameters are ignored), else `default`.
fn top_of(query: Option<&str>, default: usize) -> Result<usize, Response> {
    let Some(value) = query.into_iter().flat_map(|q| q.split('&')).find_map(|p| p.strip_prefix("top=")) else {
        return Ok(default);
    };
    match value.parse::<usize>() {
        Ok(k) if k >= 1 => Ok(k),
        _ => Err(refuse(StatusCode::BAD_REQUEST, format!("invalid top `{value}`: expected a number of classes, at least 1"))),
    }
}

/// 413 for a body over the limit (`declared`: its Content-Length, 0 when it had none).
fn too_large(declared: u64, max: usize) -> Response {
    let size = if declared > 0 { format!("a body of {declared} bytes") } else { "the body".to_string() };
    let mut response = refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("{size} is over the limit of {max} bytes (--max-body-bytes)"));
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_take_their_size_in_mib_of_the_budget() {
        assert_eq!(budget_mib(0), 1);
        assert_eq!(budget_mib(1), 1);
        assert_eq!(budget_mib(1 << 20), 1);
        assert_eq!(budget_mib((1 << 20) + 1), 2);
        assert_eq!(budget_mib(32 << 20), 32);
    }

    #[test]
    fn top_comes_from_the_query_or_the_default() {
        assert_eq!(top_of(None, 5).ok(), Some(5));
        assert_eq!(top_of(Some("x=1&top=2"), 5).ok(), Some(2));
        for bad in ["top=0", "top=two", "top=-1"] {
            let r = top_of(Some(bad), 5).err().expect("refused");
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
