//! Zero-shot text classification: no labelled example, only a description of each class.
//! Each description is put into a prompt template (`This is a {}.`), embedded by the sentence
//! encoder like any text (mean pooling, L2 normalisation), and a text goes to the class whose
//! embedding has the highest cosine similarity with its own. With several templates a class's
//! embedding is the normalised mean of its prompts' embeddings (prompt ensembling, as CLIP does).

use std::path::Path;

use super::features::{embed_cached, EmbedStats};
use super::SentenceEncoder;
use crate::cache::FeatureStore;
use crate::report::Reporter;
use crate::{GraftError, Result};

/// The template that embeds the bare description.
pub const BARE_TEMPLATE: &str = "{}";

/// The most classes one zero-shot classifier tells apart.
pub const MAX_CLASSES: usize = 10_000;

/// `template` with `{}` replaced by `description`; a template must hold `{}` exactly once.
pub fn apply_template(template: &str, description: &str) -> Result<String> {
    if template.matches("{}").count() != 1 {
        return Err(GraftError::setting("template", template, "must hold `{}` exactly once, where the label description goes (e.g. \"This is a {}.\")"));
    }
    Ok(template.replacen("{}", description, 1))
}

/// A class: its name (what is printed and matched against a dataset's labels) and the
/// description that is embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelDescription {
    pub name: String,
    pub description: String,
}

/// Classes given on the command line, comma-separated (`positive review,negative review`):
/// each description is also its class's name.
pub fn parse_labels(value: &str) -> Result<Vec<LabelDescription>> {
    let labels: Vec<LabelDescription> = value
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| LabelDescription { name: l.to_string(), description: l.to_string() })
        .collect();
    check_labels(labels, |reason| GraftError::setting("labels", value, reason))
}

/// A labels file: one class a line, `NAME: description` (the class `NAME` as a dataset spells
/// it, then the text to embed), or just a description that is also the class's name. Blank
/// lines and lines starting with `#` are skipped.
pub fn read_labels_file(path: &Path) -> Result<Vec<LabelDescription>> {
    let bytes = crate::fsutil::read_regular(path, crate::limits::MAX_TEXT_FILE_BYTES)?;
    let text = super::dataset::decode_text(&bytes);
    let mut labels = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, description) = match line.split_once(':') {
            Some((name, description)) => (name.trim(), description.trim()),
            None => (line, line),
        };
        if name.is_empty() || description.is_empty() {
            return Err(GraftError::Data { path: path.to_path_buf(), reason: format!("line `{line}`: expected `NAME: description` or a description") });
        }
        labels.push(LabelDescription { name: name.to_string(), description: description.to_string() });
    }
    check_labels(labels, |reason| GraftError::Data { path: path.to_path_buf(), reason })
}

fn check_labels(labels: Vec<LabelDescription>, err: impl Fn(String) -> GraftError) -> Result<Vec<LabelDescription>> {
    if labels.len() < 2 {
        return Err(err(format!("zero-shot classification needs at least 2 classes, found {}", labels.len())));
    }
    if labels.len() > MAX_CLASSES {
        return Err(err(format!("{} classes, over the limit of {MAX_CLASSES} (graft::text::zeroshot::MAX_CLASSES)", labels.len())));
    }
    for (i, l) in labels.iter().enumerate() {
        if labels[..i].iter().any(|o| o.name == l.name) {
            return Err(err(format!("the class `{}` is given twice", l.name)));
        }
    }
    Ok(labels)
}

/// Class embeddings from label descriptions, ready to classify texts.
#[derive(Debug, Clone)]
pub struct ZeroShot {
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// The texts embedded for each class: its description in each template.
    pub prompts: Vec<Vec<String>>,
    /// One unit-length embedding per class.
    pub embeddings: Vec<Vec<f32>>,
}

fn normalised(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / n).collect()
}

impl ZeroShot {
    /// Embeds every class's description in every template (`{}` marks where it goes), through
    /// `store` when given.
    pub fn new(encoder: &SentenceEncoder, labels: &[LabelDescription], templates: &[String], store: Option<&mut FeatureStore>, reporter: &dyn Reporter, stats: &mut EmbedStats) -> Result<Self> {
        let templates: Vec<&str> = if templates.is_empty() { vec![BARE_TEMPLATE] } else { templates.iter().map(String::as_str).collect() };
        let prompts: Vec<Vec<String>> = labels.iter().map(|l| templates.iter().map(|t| apply_template(t, &l.description)).collect::<Result<Vec<_>>>()).collect::<Result<_>>()?;
        let flat: Vec<&str> = prompts.iter().flatten().map(String::as_str).collect();
        let embedded = embed_cached(encoder, &flat, store, reporter, stats)?;
        Ok(Self::from_prompt_embeddings(labels.iter().map(|l| l.name.clone()).collect(), prompts, &embedded))
    }

    /// Class embeddings from the embeddings of `prompts` (flattened, class by class): the
    /// normalised mean of each class's prompts.
    pub fn from_prompt_embeddings(classes: Vec<String>, prompts: Vec<Vec<String>>, embedded: &[Vec<f32>]) -> Self {
        let mut rows = embedded.iter();
        let embeddings = prompts
            .iter()
            .map(|p| {
                let mut sum: Vec<f32> = Vec::new();
                for row in rows.by_ref().take(p.len()) {
                    let row = normalised(row.clone());
                    if sum.is_empty() {
                        sum = row;
                    } else {
                        sum.iter_mut().zip(&row).for_each(|(s, v)| *s += v);
                    }
                }
                normalised(sum)
            })
            .collect();
        Self { classes, prompts, embeddings }
    }

    /// Cosine similarity of each text embedding with each class, [texts][classes].
    pub fn similarities(&self, texts: &[Vec<f32>]) -> Vec<Vec<f32>> {
        texts
            .iter()
            .map(|t| {
                let t = normalised(t.clone());
                self.embeddings.iter().map(|c| c.iter().zip(&t).map(|(a, b)| a * b).sum()).collect()
            })
            .collect()
    }

    /// Embeds `texts` (through `store`) and returns their similarities with each class.
    pub fn classify<S: AsRef<str>>(&self, encoder: &SentenceEncoder, texts: &[S], store: Option<&mut FeatureStore>, reporter: &dyn Reporter, stats: &mut EmbedStats) -> Result<Vec<Vec<f32>>> {
        let embedded = embed_cached(encoder, texts, store, reporter, stats)?;
        Ok(self.similarities(&embedded))
    }
}

/// The class of highest similarity of each row (the first on a tie).
pub fn argmax(similarities: &[Vec<f32>]) -> Vec<usize> {
    crate::train::run::top1(similarities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_put_the_description_in_place() {
        assert_eq!(apply_template("This is a {}.", "positive review").unwrap(), "This is a positive review.");
        assert_eq!(apply_template(BARE_TEMPLATE, "spam").unwrap(), "spam");
        for bad in ["This is a review.", "{} or {}", ""] {
            let e = apply_template(bad, "x").unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid template `{bad}`")), "{e}");
        }
    }

    #[test]
    fn labels_from_a_list_and_a_file() {
        let l = parse_labels(" positive review , negative review,").unwrap();
        assert_eq!(l.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["positive review", "negative review"]);
        assert_eq!(l[0].description, "positive review");
        assert!(parse_labels("spam").unwrap_err().to_string().starts_with("invalid labels `spam`: zero-shot classification needs at least 2 classes"));
        assert!(parse_labels("a,b,a").unwrap_err().to_string().contains("the class `a` is given twice"));

        let dir = std::env::temp_dir().join(format!("graft-zeroshot-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("labels.txt");
        std::fs::write(&file, "# sentiment\npos: a positive movie review\n\nneg: a negative movie review\nneutral\n").unwrap();
        let l = read_labels_file(&file).unwrap();
        assert_eq!(l[0], LabelDescription { name: "pos".into(), description: "a positive movie review".into() });
        assert_eq!(l[1].name, "neg");
        assert_eq!(l[2], LabelDescription { name: "neutral".into(), description: "neutral".into() });
        std::fs::write(&file, "pos:\nneg: bad\n").unwrap();
        let e = read_labels_file(&file).unwrap_err().to_string();
        assert!(e.contains("labels.txt") && e.contains("line `pos:`"), "{e}");
        std::fs::write(&file, "pos: good\n").unwrap();
        assert!(read_labels_file(&file).unwrap_err().to_string().contains("at least 2 classes, found 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Class embeddings are the normalised mean over templates, and texts go to the most
    /// similar class.
    #[test]
    fn prompts_average_and_the_nearest_class_wins() {
        let prompts = vec![vec!["a".to_string(), "b".to_string()], vec!["c".to_string(), "d".to_string()]];
        let embedded = vec![vec![2.0, 0.0], vec![0.0, 1.0], vec![-1.0, 0.0], vec![-3.0, 0.0]];
        let z = ZeroShot::from_prompt_embeddings(vec!["x".into(), "y".into()], prompts, &embedded);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((z.embeddings[0][0] - h).abs() < 1e-6 && (z.embeddings[0][1] - h).abs() < 1e-6);
        assert_eq!(z.embeddings[1], vec![-1.0, 0.0]);
        let s = z.similarities(&[vec![1.0, 1.0], vec![-5.0, 1.0]]);
        assert!((s[0][0] - 1.0).abs() < 1e-6 && (s[0][1] + h).abs() < 1e-6);
        assert_eq!(argmax(&s), vec![0, 1]);
    }
}
