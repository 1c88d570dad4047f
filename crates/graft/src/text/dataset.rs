//! Labelled text datasets: graft's two user formats and readers for the shared benchmark sets.
//!
//! * CSV with a header naming a `text` and a `label` column (any order, other columns ignored;
//!   RFC 4180 quoting, so texts may hold commas, quotes and newlines).
//! * A folder of class sub-folders holding `.txt` files, one document per file (searched
//!   recursively, hidden entries ignored, files sorted by path), like the image folders.
//! * SMS spam (`label<TAB>text`, header line), rt-polarity (`rt-polarity.pos`/`.neg`, one
//!   sentence per line), Amazon multi-domain reviews (`positive.review`/`negative.review`,
//!   pseudo-XML with the text in `<review_text>`).
//!
//! Class names are sorted (byte order) and a label is an index into them. Bytes that are not
//! UTF-8 are read as Latin-1, line by line: the old corpora mix the two encodings.
//!
//! The two user formats are not held in memory: reading one indexes it (a CSV record's byte
//! offset, a `.txt` file's path, and the labels), and [`Texts`] reads texts back when they are
//! needed, a chunk at a time. The benchmark sets are small files read whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::folder::Skipped;
use crate::limits;
use crate::{GraftError, Result};

/// Texts with labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextDataset {
    /// The file or folder read.
    pub source: PathBuf,
    /// Sorted class names.
    pub classes: Vec<String>,
    pub texts: Texts,
    /// Index into `classes`, one per text.
    pub labels: Vec<usize>,
    /// Files of a folder dataset that could not be read.
    pub skipped: Vec<Skipped>,
}

/// A dataset's texts: in memory, or where they are on disk, read back on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Texts {
    Memory(Vec<String>),
    /// Texts `items` of `origin`, in this order.
    Indexed { origin: Arc<Origin>, items: Vec<usize> },
}

/// Where indexed texts are.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin {
    /// A CSV file: the byte offset of each record, and the text's column.
    Csv { path: PathBuf, starts: Vec<u64>, column: usize },
    /// One `.txt` file per text.
    Files(Vec<PathBuf>),
}

/// Texts read per call of [`Texts::chunks`].
pub const TEXT_CHUNK: usize = 4096;

impl From<Vec<String>> for Texts {
    fn from(texts: Vec<String>) -> Self {
        Texts::Memory(texts)
    }
}

impl Texts {
    pub fn len(&self) -> usize {
        match self {
            Texts::Memory(t) => t.len(),
            Texts::Indexed { items, .. } => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Texts at `indices`, in that order. A file that changed since it was indexed so that a
    /// text can no longer be read is an error naming it.
    pub fn read(&self, indices: &[usize]) -> Result<Vec<String>> {
        let (origin, items) = match self {
            Texts::Memory(t) => return Ok(indices.iter().map(|&i| t[i].clone()).collect()),
            Texts::Indexed { origin, items } => (origin, items),
        };
        match &**origin {
            Origin::Files(paths) => indices
                .iter()
                .map(|&i| {
                    let path = &paths[items[i]];
                    crate::fsutil::read_regular(path, limits::MAX_TEXT_FILE_BYTES).map(|bytes| text_of(&bytes))
                })
                .collect(),
            Origin::Csv { path, starts, column } => {
                let changed = |why: String| data_err(path, format!("changed since it was read ({why})"));
                let file = fs::File::open(path).map_err(|e| GraftError::io(path, e))?;
                let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(std::io::BufReader::new(file));
                let mut record = csv::ByteRecord::new();
                let mut out = Vec::with_capacity(indices.len());
                for &i in indices {
                    // Records read in file order need no seek.
                    if reader.position().byte() != starts[items[i]] {
                        let mut at = csv::Position::new();
                        at.set_byte(starts[items[i]]);
                        reader.seek(at).map_err(|e| changed(e.to_string()))?;
                    }
                    if !reader.read_byte_record(&mut record).map_err(|e| changed(e.to_string()))? {
                        return Err(changed("a record is missing".into()));
                    }
                    out.push(text_of(record.get(*column).ok_or_else(|| changed("a record lost its text field".into()))?));
                }
                Ok(out)
            }
        }
    }

    /// Every text, in order (for what needs them all at once: a prediction listing, a CSV).
    pub fn to_vec(&self) -> Result<Vec<String>> {
        match self {
            Texts::Memory(t) => Ok(t.clone()),
            _ => self.read(&(0..self.len()).collect::<Vec<_>>()),
        }
    }

    /// The texts in order, [`TEXT_CHUNK`] at a time.
    pub fn chunks(&self) -> impl Iterator<Item = Result<Vec<String>>> + '_ {
        (0..self.len()).step_by(TEXT_CHUNK).map(move |start| self.read(&(start..(start + TEXT_CHUNK).min(self.len())).collect::<Vec<_>>()))
    }

    /// The texts at `indices`, in that order (nothing is read).
    pub fn subset(&self, indices: &[usize]) -> Texts {
        match self {
            Texts::Memory(t) => Texts::Memory(indices.iter().map(|&i| t[i].clone()).collect()),
            Texts::Indexed { origin, items } => Texts::Indexed { origin: origin.clone(), items: indices.iter().map(|&i| items[i]).collect() },
        }
    }
}

fn data_err(path: &Path, reason: impl Into<String>) -> GraftError {
    GraftError::Data { path: path.to_path_buf(), reason: reason.into() }
}

/// The whole dataset file, if a regular file of at most [`limits::MAX_TEXT_FILE_BYTES`].
fn read(path: &Path) -> Result<Vec<u8>> {
    crate::fsutil::read_regular(path, limits::MAX_TEXT_FILE_BYTES).map_err(|e| match e {
        GraftError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => data_err(path, "file does not exist"),
        e => e,
    })
}

/// One text as read: decoded ([`decode_text`]) and cut to [`limits::MAX_TEXT_BYTES`].
fn text_of(bytes: &[u8]) -> String {
    let cut = bytes.len().min(limits::MAX_TEXT_BYTES);
    let mut end = cut;
    // Not inside a UTF-8 character (which would turn the last line into Latin-1).
    while end < bytes.len() && end > 0 && cut - end < 3 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    let mut text = decode_text(&bytes[..end]);
    let keep = limits::truncate_str(&text, limits::MAX_TEXT_BYTES).len();
    text.truncate(keep);
    text
}

/// Refuses a dataset with more than [`limits::MAX_CLASSES`] classes, as soon as it has them.
fn check_class_count(path: &Path, classes: usize) -> Result<()> {
    if classes > limits::MAX_CLASSES {
        return Err(data_err(path, format!("more than {} classes (graft::limits::MAX_CLASSES)", limits::MAX_CLASSES)));
    }
    Ok(())
}

/// UTF-8 text, with lines that are not valid UTF-8 read as Latin-1 and a leading BOM dropped.
pub fn decode_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes
            .split_inclusive(|&b| b == b'\n')
            .map(|line| match std::str::from_utf8(line) {
                Ok(s) => s.to_string(),
                Err(_) => line.iter().map(|&b| b as char).collect(),
            })
            .collect(),
    }
}

/// A CSV file's `text` column and the label columns `label_columns` (named in its header, any
/// order, other columns ignored; none: unlabelled texts): the texts indexed by record offset
/// (read back when needed, [`Texts::read`]), and per label column its classes (sorted) and each
/// record's class.
pub fn read_csv_columns(path: &Path, label_columns: &[&str]) -> Result<(Texts, Vec<(Vec<String>, Vec<usize>)>)> {
    let file = crate::fsutil::open_regular(path).map_err(|e| match e {
        GraftError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => data_err(path, "file does not exist"),
        e => e,
    })?;
    // The size bounds what one record can make the reader allocate.
    let max = limits::MAX_TEXT_FILE_BYTES;
    let len = file.metadata().map_err(|e| GraftError::io(path, e))?.len();
    if len > max {
        return Err(data_err(path, format!("file is {len} bytes, over the limit of {max} bytes for this kind of file")));
    }
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(std::io::BufReader::new(std::io::Read::take(file, max + 1)));
    let header = reader.byte_headers().map_err(|e| data_err(path, format!("cannot read the CSV header: {e}")))?.clone();
    let column = |name: &str| {
        header.iter().position(|h| {
            let h = h.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(h);
            decode_text(h).trim().eq_ignore_ascii_case(name)
        })
    };
    let named = |columns: &[&str]| columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(" and ");
    let text_col = column("text");
    let label_cols: Vec<Option<usize>> = label_columns.iter().map(|c| column(c)).collect();
    let (Some(text_col), true) = (text_col, label_cols.iter().all(Option::is_some)) else {
        let mut wanted = vec!["text"];
        wanted.extend(label_columns);
        return Err(data_err(path, format!("the CSV header must name a {} column", named(&wanted))));
    };
    let label_cols: Vec<usize> = label_cols.into_iter().flatten().collect();
    let mut starts = Vec::new();
    let mut names: Vec<Vec<String>> = vec![Vec::new(); label_cols.len()];
    let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); label_cols.len()];
    let mut record = csv::ByteRecord::new();
    loop {
        let at = reader.position().byte();
        if !reader.read_byte_record(&mut record).map_err(|e| data_err(path, format!("bad CSV: {e}")))? {
            break;
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.get(text_col).is_none() {
            return Err(data_err(path, format!("line {line}: missing the text field")));
        }
        for (k, &col) in label_cols.iter().enumerate() {
            let Some(label) = record.get(col).map(decode_text) else {
                return Err(data_err(path, format!("line {line}: missing the {} field", label_columns[k])));
            };
            let label = limits::truncate_str(label.trim(), limits::MAX_TEXT_BYTES).to_string();
            if label.is_empty() {
                return Err(data_err(path, format!("line {line}: empty {}", label_columns[k])));
            }
            if !seen[k].contains(&label) {
                seen[k].insert(label.clone());
                check_class_count(path, seen[k].len())?;
            }
            names[k].push(label);
        }
        starts.push(record.position().map(|p| p.byte()).unwrap_or(at));
    }
    if starts.is_empty() {
        return Err(data_err(path, "the CSV file has no rows"));
    }
    let tasks = seen
        .into_iter()
        .zip(names)
        .map(|(seen, names)| {
            let classes: Vec<String> = seen.into_iter().collect();
            let index: BTreeMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
            let labels = names.iter().map(|l| index[l.as_str()]).collect();
            (classes, labels)
        })
        .collect();
    let items = (0..starts.len()).collect();
    Ok((Texts::Indexed { origin: Arc::new(Origin::Csv { path: path.to_path_buf(), starts, column: text_col }), items }, tasks))
}

/// Unlabelled texts: a CSV file with a `text` column (other columns ignored), or a folder of
/// `.txt` files (searched recursively, one text per file).
pub fn read_unlabelled(path: &Path) -> Result<Texts> {
    if path.is_dir() {
        let files = crate::data::folder::files_below(path, &|p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")))?;
        if files.is_empty() {
            return Err(data_err(path, "no .txt files"));
        }
        let items = (0..files.len()).collect();
        return Ok(Texts::Indexed { origin: Arc::new(Origin::Files(files)), items });
    }
    Ok(read_csv_columns(path, &[])?.0)
}

impl TextDataset {
    /// Builds a dataset from (label, text) pairs; classes are the distinct labels, sorted.
    pub fn from_pairs(source: &Path, pairs: Vec<(String, String)>) -> Self {
        let classes: Vec<String> = pairs.iter().map(|(l, _)| l.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let index: BTreeMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        let labels = pairs.iter().map(|(l, _)| index[l.as_str()]).collect();
        let texts = Texts::Memory(pairs.into_iter().map(|(_, t)| t).collect());
        Self { source: source.to_path_buf(), classes, texts, labels, skipped: Vec::new() }
    }

    /// A folder of class sub-folders, or else a CSV file.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::scan_folder(path)
        } else {
            Self::read_csv(path)
        }
    }

    /// Any text dataset graft reads, told apart by its layout: a folder with
    /// `positive.review` and `negative.review` (one Amazon reviews domain), a folder with
    /// `rt-polarity.pos` and `.neg`, a file named `SMSSpamCollection`, else a folder of class
    /// sub-folders of `.txt` files or a CSV file with `text` and `label` columns.
    pub fn open_any(path: &Path) -> Result<Self> {
        if path.is_dir() {
            if path.join("positive.review").is_file() && path.join("negative.review").is_file() {
                return Self::amazon_reviews(path);
            }
            if path.join("rt-polarity.pos").is_file() && path.join("rt-polarity.neg").is_file() {
                return Self::rt_polarity(path);
            }
            return Self::scan_folder(path);
        }
        if path.file_name().is_some_and(|n| n == "SMSSpamCollection") {
            return Self::sms_spam(path);
        }
        Self::read_csv(path)
    }

    /// Writes `text,label` CSV (the label is the class name), atomically.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
        let io = |e: csv::Error| data_err(path, format!("cannot write CSV: {e}"));
        writer.write_record(["text", "label"]).map_err(io)?;
        let mut labels = self.labels.iter();
        for chunk in self.texts.chunks() {
            for (text, &label) in chunk?.iter().zip(&mut labels) {
                writer.write_record([text.as_str(), self.classes[label].as_str()]).map_err(io)?;
            }
        }
        let bytes = writer.into_inner().map_err(|e| data_err(path, format!("cannot write CSV: {e}")))?;
        crate::fsutil::write_atomic(path, &bytes)
    }

    /// At most `per_class` texts of each class, picked with a generator seeded by `seed`, in
    /// their original order.
    pub fn seeded_per_class(&self, per_class: usize, seed: u64) -> Self {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut taken = vec![0usize; self.classes.len()];
        let mut keep: Vec<usize> = order
            .into_iter()
            .filter(|&i| {
                let t = &mut taken[self.labels[i]];
                *t += 1;
                *t <= per_class
            })
            .collect();
        keep.sort_unstable();
        self.subset(&keep)
    }

    /// A CSV file with `text` and `label` columns named in its header: read once, keeping each
    /// record's offset and label; the texts are read back when needed ([`Texts::read`]).
    pub fn read_csv(path: &Path) -> Result<Self> {
        let (texts, mut tasks) = read_csv_columns(path, &["label"])?;
        let (classes, labels) = tasks.pop().expect("one label column asked");
        Ok(Self { source: path.to_path_buf(), classes, texts, labels, skipped: Vec::new() })
    }

    /// `DIR/<class>/**/*.txt`, one document per file.
    pub fn scan_folder(root: &Path) -> Result<Self> {
        let is_hidden = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        let mut classes = Vec::new();
        for entry in fs::read_dir(root).map_err(|e| GraftError::io(root, e))? {
            let path = entry.map_err(|e| GraftError::io(root, e))?.path();
            if !is_hidden(&path) && path.is_dir() {
                let name = path.file_name().and_then(|n| n.to_str()).map(String::from);
                let name = name.ok_or_else(|| data_err(&path, "class folder name is not valid UTF-8"))?;
                classes.push((name, path));
                check_class_count(root, classes.len())?;
            }
        }
        classes.sort();
        if classes.is_empty() {
            return Err(data_err(root, "no class sub-folders (expected DIR/<class>/<file>.txt)"));
        }
        let mut dataset = Self {
            source: root.to_path_buf(),
            classes: Vec::new(),
            texts: Texts::Memory(Vec::new()),
            labels: Vec::new(),
            skipped: Vec::new(),
        };
        let mut paths = Vec::new();
        for (label, (name, dir)) in classes.into_iter().enumerate() {
            let mut files = Vec::new();
            walk_txt(&dir, 0, &mut files)?;
            files.sort();
            if files.is_empty() {
                return Err(data_err(&dir, "class folder holds no .txt files"));
            }
            for file in files {
                // Checked now (a file that cannot be read is skipped and counted), read again when
                // its text is needed.
                match crate::fsutil::read_regular(&file, limits::MAX_TEXT_FILE_BYTES) {
                    Ok(_) => {
                        paths.push(file);
                        dataset.labels.push(label);
                    }
                    Err(e) => {
                        let reason = match e {
                            GraftError::Data { reason, .. } => reason,
                            GraftError::Io { source, .. } => source.to_string(),
                            e => e.to_string(),
                        };
                        dataset.skipped.push(Skipped { path: file, reason })
                    }
                }
            }
            dataset.classes.push(name);
        }
        if paths.is_empty() {
            return Err(data_err(root, "no readable .txt files"));
        }
        dataset.texts = Texts::Indexed { items: (0..paths.len()).collect(), origin: Arc::new(Origin::Files(paths)) };
        Ok(dataset)
    }

    /// SMS Spam Collection: `label<TAB>text` lines after a header line.
    pub fn sms_spam(path: &Path) -> Result<Self> {
        let text = decode_text(&read(path)?);
        let mut pairs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if i == 0 || line.is_empty() {
                continue; // header
            }
            let Some((label, message)) = line.split_once('\t') else {
                return Err(data_err(path, format!("line {}: expected `label<TAB>text`", i + 1)));
            };
            if label.trim().is_empty() {
                return Err(data_err(path, format!("line {}: empty label", i + 1)));
            }
            pairs.push((label.trim().to_string(), message.to_string()));
        }
        if pairs.is_empty() {
            return Err(data_err(path, "no messages"));
        }
        Ok(Self::from_pairs(path, pairs))
    }

    /// Pang & Lee sentence polarity: `DIR/rt-polarity.{neg,pos}`, one sentence per line.
    /// Classes `neg`, `pos`.
    pub fn rt_polarity(dir: &Path) -> Result<Self> {
        let mut pairs = Vec::new();
        for class in ["neg", "pos"] {
            let path = dir.join(format!("rt-polarity.{class}"));
            let text = decode_text(&read(&path)?);
            let before = pairs.len();
            pairs.extend(
                text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| (class.to_string(), l.to_string())),
            );
            if pairs.len() == before {
                return Err(data_err(&path, "no sentences"));
            }
        }
        Ok(Self::from_pairs(dir, pairs))
    }

    /// One domain of the Blitzer et al. multi-domain sentiment data:
    /// `DIR/{negative,positive}.review`. Classes `negative`, `positive`.
    pub fn amazon_reviews(domain_dir: &Path) -> Result<Self> {
        let mut pairs = Vec::new();
        for class in ["negative", "positive"] {
            let path = domain_dir.join(format!("{class}.review"));
            let texts = review_texts(&decode_text(&read(&path)?)).map_err(|reason| data_err(&path, reason))?;
            pairs.extend(texts.into_iter().map(|t| (class.to_string(), t)));
        }
        Ok(Self::from_pairs(domain_dir, pairs))
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Number of texts of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// Errors unless there are at least two classes, each with a text.
    pub fn check_trainable(&self) -> Result<()> {
        if self.classes.len() < 2 {
            return Err(data_err(
                &self.source,
                format!("training needs at least 2 classes, found {}", self.classes.len()),
            ));
        }
        if let Some(c) = self.class_counts().iter().position(|&n| n == 0) {
            return Err(data_err(&self.source, format!("class `{}` has no texts", self.classes[c])));
        }
        Ok(())
    }

    /// The texts at `indices` (in that order), same classes.
    pub fn subset(&self, indices: &[usize]) -> Self {
        Self {
            source: self.source.clone(),
            classes: self.classes.clone(),
            texts: self.texts.subset(indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            skipped: Vec::new(),
        }
    }

    /// Relabels against a training run's classes (evaluation data may lack some of them);
    /// errors on a class the run does not know.
    pub fn with_classes(mut self, classes: &[String]) -> Result<Self> {
        let mut map = Vec::with_capacity(self.classes.len());
        for name in &self.classes {
            let i = classes.iter().position(|c| c == name).ok_or_else(|| {
                data_err(
                    &self.source,
                    format!("class `{name}` is not one of the model's classes ({})", classes.join(", ")),
                )
            })?;
            map.push(i);
        }
        self.labels.iter_mut().for_each(|l| *l = map[*l]);
        self.classes = classes.to_vec();
        Ok(self)
    }
}

fn walk_txt(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    const MAX_DEPTH: usize = 32;
    for entry in fs::read_dir(dir).map_err(|e| GraftError::io(dir, e))? {
        let entry = entry.map_err(|e| GraftError::io(dir, e))?;
        if entry.file_name().to_str().is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        let path = entry.path();
        // Sub-folders are entered only when real folders (no symlink loops).
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if depth < MAX_DEPTH {
                walk_txt(&path, depth + 1, out)?;
            }
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("txt"))
            && path.is_file()
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The contents of every `<review_text>` element, trimmed, entities decoded.
fn review_texts(doc: &str) -> std::result::Result<Vec<String>, String> {
    const OPEN: &str = "<review_text>";
    const CLOSE: &str = "</review_text>";
    let mut texts = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find(OPEN) {
        let body = &rest[start + OPEN.len()..];
        let end = body.find(CLOSE).ok_or_else(|| format!("review {} has an unclosed {OPEN}", texts.len() + 1))?;
        texts.push(unescape_entities(body[..end].trim()));
        rest = &body[end + CLOSE.len()..];
    }
    let records = doc.matches("<review>").count();
    if texts.is_empty() || texts.len() != records {
        return Err(format!("found {} {OPEN} elements in {records} <review> records", texts.len()));
    }
    Ok(texts)
}

/// Decodes `&quot;`, `&amp;`, `&lt;`, `&gt;`, `&apos;` and numeric references; anything else
/// is kept as written.
fn unescape_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let decoded = tail.find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let entity = &tail[1..semi];
            let c = match entity {
                "quot" => Some('"'),
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| entity.strip_prefix('#').map(|d| d.parse::<u32>()))
                    .and_then(|n| n.ok())
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Splits indices into (train, held-out), stratified by label, as `data::folder::stratified_split`
/// does for images: each class is shuffled with a generator seeded from `seed` and the label,
/// and `round(n · held_out)` of its `n` texts are held out, clamped so that a class with at least
/// 2 texts keeps one on each side. Both lists are sorted. `held_out` must lie strictly between
/// 0 and 1.
pub fn stratified_split(labels: &[usize], held_out: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(held_out > 0.0 && held_out < 1.0) {
        return Err(GraftError::setting(
            "val_split",
            &held_out.to_string(),
            "the fraction must lie strictly between 0 and 1",
        ));
    }
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &label) in labels.iter().enumerate() {
        by_class.entry(label).or_default().push(i);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (label, mut idx) in by_class {
        let n = idx.len();
        let mut rng = StdRng::seed_from_u64(splitmix64(seed ^ splitmix64(label as u64)));
        idx.shuffle(&mut rng);
        let n_test = if n < 2 { 0 } else { ((n as f64 * held_out).round() as usize).clamp(1, n - 1) };
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok((train, test))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(texts: &Texts) -> Vec<String> {
        texts.to_vec().unwrap()
    }

    #[test]
    fn csv_texts_are_read_back_on_demand_in_any_order() {
        let dir = scratch("csv-indexed");
        let path = dir.join("d.csv");
        let rows: Vec<String> = (0..10_000).map(|i| format!("\"text, number {i}\",{}", if i % 3 == 0 { "a" } else { "b" })).collect();
        fs::write(&path, format!("text,label\n{}\n", rows.join("\n"))).unwrap();
        let d = TextDataset::read_csv(&path).unwrap();
        assert!(matches!(d.texts, Texts::Indexed { .. }), "a CSV is indexed, not held");
        assert_eq!((d.len(), d.classes.clone()), (10_000, vec!["a".to_string(), "b".to_string()]));
        assert_eq!(d.texts.read(&[9_999, 0, 5_000]).unwrap(), ["text, number 9999", "text, number 0", "text, number 5000"]);
        let sub = d.subset(&[3, 1]);
        assert_eq!((all(&sub.texts), sub.labels.clone()), (vec!["text, number 3".to_string(), "text, number 1".to_string()], vec![0, 1]));
        let chunks: Vec<usize> = d.texts.chunks().map(|c| c.unwrap().len()).collect();
        assert_eq!(chunks, [TEXT_CHUNK, TEXT_CHUNK, 10_000 - 2 * TEXT_CHUNK]);
        // A file cut short after indexing: an error naming it, not a panic.
        fs::write(&path, "text,label\n\"x\",a\n").unwrap();
        let e = d.texts.read(&[9_999]).unwrap_err().to_string();
        assert!(e.contains("d.csv") && e.contains("changed since it was read"), "{e}");
    }

    fn shared() -> PathBuf {
        std::env::var_os("GRAFT_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
            .join("data/text")
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/graft-test-scratch/text-lib").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A 50 MB text is cut to MAX_TEXT_BYTES while reading (whole characters kept); too many
    /// classes are refused as soon as the row that makes one too many is read.
    #[test]
    fn huge_texts_are_cut_and_class_counts_bounded() {
        let dir = scratch("hostile");
        let huge = dir.join("huge.csv");
        let mut body = String::from("text,label\n\"");
        body.push_str(&"é".repeat(25 << 20)); // 50 MB of 2-byte characters
        body.push_str("\",a\nshort,b\n");
        fs::write(&huge, body).unwrap();
        let d = TextDataset::read_csv(&huge).unwrap();
        assert_eq!(all(&d.texts)[0].len(), limits::MAX_TEXT_BYTES);
        assert!(all(&d.texts)[0].chars().all(|c| c == 'é'));
        assert_eq!(all(&d.texts)[1], "short");

        let many = dir.join("many.csv");
        let mut body = String::from("text,label\n");
        for i in 0..=limits::MAX_CLASSES {
            body.push_str(&format!("t,c{i}\n"));
        }
        fs::write(&many, &body).unwrap();
        let err = TextDataset::read_csv(&many).unwrap_err().to_string();
        assert!(err.contains("many.csv") && err.contains("more than 10000 classes (graft::limits::MAX_CLASSES)"), "{err}");
        // One fewer class is fine.
        let fewer: String = body.lines().take(limits::MAX_CLASSES + 1).map(|l| format!("{l}\n")).collect();
        fs::write(&many, fewer).unwrap();
        assert_eq!(TextDataset::read_csv(&many).unwrap().classes.len(), limits::MAX_CLASSES);
    }

    #[test]
    fn sms_spam_counts() {
        let d = TextDataset::sms_spam(&shared().join("sms-spam/SMSSpamCollection")).unwrap();
        assert_eq!(d.classes, ["ham", "spam"]);
        assert_eq!(d.class_counts(), [4827, 747]);
        assert_eq!(all(&d.texts)[1], "Ok lar... Joking wif u oni...");
    }

    #[test]
    fn rt_polarity_counts() {
        let d = TextDataset::rt_polarity(&shared().join("rt-polarity")).unwrap();
        assert_eq!(d.classes, ["neg", "pos"]);
        assert_eq!(d.class_counts(), [5331, 5331]);
    }

    #[test]
    fn amazon_reviews_counts_per_domain() {
        for domain in ["books", "dvd", "electronics", "kitchen"] {
            let d = TextDataset::amazon_reviews(&shared().join("amazon-reviews").join(domain)).unwrap();
            assert_eq!(d.classes, ["negative", "positive"], "{domain}");
            assert_eq!(d.class_counts(), [1000, 1000], "{domain}");
            assert!(all(&d.texts).iter().all(|t| !t.is_empty() && !t.contains("<review_text>")), "{domain}");
        }
        let books = TextDataset::amazon_reviews(&shared().join("amazon-reviews/books")).unwrap();
        assert!(all(&books.texts)[1000].starts_with("Sphere by Michael Crichton is an excellant novel."));
        assert!(!all(&books.texts).iter().any(|t| t.contains("&quot;")), "entities are decoded");
    }

    #[test]
    fn csv_with_quoting_and_any_column_order() {
        let dir = scratch("csv");
        let path = dir.join("d.csv");
        fs::write(&path, "id,label,text\n1,pos,\"great, really \"\"great\"\"\"\n2,neg,\"two\nlines\"\n3,pos,plain\n")
            .unwrap();
        let d = TextDataset::open(&path).unwrap();
        assert_eq!(d.classes, ["neg", "pos"]);
        assert_eq!(all(&d.texts), ["great, really \"great\"", "two\nlines", "plain"]);
        assert_eq!(d.labels, [1, 0, 1]);
    }

    #[test]
    fn csv_errors_name_the_problem() {
        let dir = scratch("csv-bad");
        let no_label = dir.join("a.csv");
        fs::write(&no_label, "text,class\nhi,x\n").unwrap();
        let e = TextDataset::read_csv(&no_label).unwrap_err().to_string();
        assert!(e.contains("a.csv") && e.contains("`label`"), "{e}");
        let ragged = dir.join("b.csv");
        fs::write(&ragged, "text,label\nhi,x\nho\n").unwrap();
        let e = TextDataset::read_csv(&ragged).unwrap_err().to_string();
        assert!(e.contains("b.csv"), "{e}");
        let e = TextDataset::open(&dir.join("missing.csv")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn folder_of_txt_files_with_latin1() {
        let dir = scratch("folder");
        fs::create_dir_all(dir.join("spam/deeper")).unwrap();
        fs::create_dir_all(dir.join("ham")).unwrap();
        fs::create_dir_all(dir.join(".hidden")).unwrap();
        fs::write(dir.join("ham/b.txt"), "second").unwrap();
        fs::write(dir.join("ham/a.txt"), b"caf\xe9").unwrap(); // Latin-1
        fs::write(dir.join("ham/notes.md"), "ignored").unwrap();
        fs::write(dir.join("spam/deeper/c.TXT"), "win £££").unwrap();
        let d = TextDataset::open(&dir).unwrap();
        assert_eq!(d.classes, ["ham", "spam"]);
        assert_eq!(all(&d.texts), ["café", "second", "win £££"]);
        assert_eq!(d.labels, [0, 0, 1]);
        fs::create_dir_all(dir.join("empty")).unwrap();
        let e = TextDataset::open(&dir).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("no .txt"), "{e}");
    }

    #[test]
    fn entities() {
        assert_eq!(unescape_entities("a &quot;b&quot; &amp; &#45;&#x41; &nbsp; & x"), "a \"b\" & -A &nbsp; & x");
    }

    #[test]
    fn split_is_stratified_seeded_and_disjoint() {
        let labels: Vec<usize> = (0..103).map(|i| usize::from(i % 5 == 0)).collect();
        let (train, test) = stratified_split(&labels, 0.5, 7).unwrap();
        assert_eq!(train.len() + test.len(), labels.len());
        assert!(train.iter().all(|i| !test.contains(i)));
        let positives = |idx: &[usize]| idx.iter().filter(|&&i| labels[i] == 1).count();
        assert!(positives(&train).abs_diff(positives(&test)) <= 1);
        assert_eq!(stratified_split(&labels, 0.5, 7).unwrap(), (train.clone(), test.clone()));
        assert_ne!(stratified_split(&labels, 0.5, 8).unwrap().1, test);
        assert!(stratified_split(&labels, 1.0, 7).is_err());
    }

    #[test]
    fn relabel_against_training_classes() {
        let d = TextDataset::from_pairs(Path::new("x"), vec![("b".into(), "t".into())]);
        let d = d.with_classes(&["a".into(), "b".into()]).unwrap();
        assert_eq!(d.labels, [1]);
        assert!(d.check_trainable().is_err());
        let unknown = TextDataset::from_pairs(Path::new("x"), vec![("z".into(), "t".into())]);
        assert!(unknown.with_classes(&["a".into()]).is_err());
    }
}
