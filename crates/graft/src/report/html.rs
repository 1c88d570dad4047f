//! `report.html`: one self-contained page per run, to open in any browser and to send to
//! someone. Every image is inlined (PNG as a `data:` URI) and the style is in the page, so the
//! file works offline and on its own. A fit writes it with the loss and accuracy curves and, when
//! it had validation data, the best epoch's confusion matrix and per-class precision, recall and
//! F1; `graft eval --report` adds an evaluation section with the top-loss gallery (each image
//! with a Grad-CAM heatmap where the model has one).

use std::fmt::Write as _;
use std::path::Path;

use super::plot::{line_plot_png, Series};
use crate::fsutil::write_atomic;
use crate::train::fit::EpochMetrics;
use crate::train::run::Evaluation;
use crate::Result;

/// The file name every run's report has.
pub const REPORT_FILE: &str = "report.html";

/// The whole page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The heading: the run's directory name.
    pub title: String,
    /// Lines of facts under the heading (`("model", "efficientnet-lite0 + linear head")`).
    pub about: Vec<(String, String)>,
    /// Training curves, one picture each.
    pub curves: Vec<Chart>,
    /// Evaluations: the fit's validation, `eval`'s data sets.
    pub sections: Vec<Section>,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

/// One evaluation: its figures and, from `eval --report`, its worst inputs.
#[derive(Debug, Clone)]
pub struct Section {
    pub heading: String,
    pub evaluation: Evaluation,
    /// The inputs with the largest loss, largest first (empty: no gallery).
    pub top_losses: Vec<TopLoss>,
    /// A sentence under the gallery's heading (how the heatmaps were made, or why there are none).
    pub gallery_note: Option<String>,
}

/// One input of the top-loss gallery.
#[derive(Debug, Clone)]
pub struct TopLoss {
    /// A file's path, or a text (shown as it is, escaped).
    pub input: String,
    pub truth: String,
    pub predicted: String,
    pub p_truth: f32,
    pub p_predicted: f32,
    /// Cross-entropy of the true class: −ln p_truth.
    pub loss: f32,
    /// The image as PNG (with its heatmap when there is one); `None` for texts.
    pub picture: Option<Vec<u8>>,
}

impl Chart {
    /// Loss and accuracy per epoch from a run's `metrics.jsonl` records (validation beside
    /// training where the run had validation data).
    pub fn from_metrics(metrics: &[EpochMetrics]) -> Vec<Chart> {
        let series = |name: &str, f: &dyn Fn(&EpochMetrics) -> Option<f64>| Series {
            name: name.into(),
            points: metrics.iter().filter_map(|m| f(m).map(|v| (m.epoch as f64, v))).collect(),
        };
        let pair = |train: Series, val: Series| if val.points.is_empty() { vec![train] } else { vec![train, val] };
        vec![
            Chart { title: "loss".into(), x_label: "epoch".into(), series: pair(series("train", &|m| Some(m.train_loss)), series("val", &|m| m.val_loss)) },
            Chart {
                title: "accuracy".into(),
                x_label: "epoch".into(),
                series: pair(series("train", &|m| Some(m.train_accuracy)), series("val", &|m| m.val_accuracy)),
            },
        ]
    }
}

impl Page {
    /// A run's page without evaluations: its name, what made it (from `model.json`, when
    /// readable) and the curves of `metrics`.
    pub fn for_run(run: &Path, metrics: &[EpochMetrics]) -> Page {
        let title = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| run.display().to_string());
        let mut about = vec![("run".to_string(), run.display().to_string())];
        if let Ok(manifest) = crate::manifest::RunManifest::load(run) {
            about.push(("kind".into(), manifest.describe().into()));
            if let crate::manifest::RunManifest::Image(info) = &manifest {
                about.push(("model".into(), format!("{} + {} head", info.model, info.head)));
            }
            if let Some(classes) = manifest.classes() {
                about.push(("classes".into(), format!("{} ({})", classes.len(), classes.join(", "))));
            }
        }
        if let Some(last) = metrics.last() {
            about.push(("epochs".into(), last.epoch.to_string()));
        }
        let curves = if metrics.is_empty() { Vec::new() } else { Chart::from_metrics(metrics) };
        Page { title, about, curves, sections: Vec::new() }
    }

    /// Writes the page to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.render()?.as_bytes())
    }

    /// The page's HTML.
    pub fn render(&self) -> Result<String> {
        let mut h = String::with_capacity(64 << 10);
        let title = escape(&self.title);
        let _ = write!(h, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title} · graft report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n");
        if !self.about.is_empty() {
            h.push_str("<table class=\"about\">\n");
            for (k, v) in &self.about {
                let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
            }
            h.push_str("</table>\n");
        }
        if !self.curves.is_empty() {
            h.push_str("<h2>Training</h2>\n<div class=\"curves\">\n");
            for chart in &self.curves {
                let png = line_plot_png(&chart.title, &chart.x_label, &chart.series)?;
                let _ = writeln!(h, "<img class=\"curve\" alt=\"{}\" src=\"{}\">", escape(&chart.title), data_uri(&png));
            }
            h.push_str("</div>\n");
        }
        for section in &self.sections {
            section.render(&mut h);
        }
        h.push_str("<footer>written by graft</footer>\n</body>\n</html>\n");
        Ok(h)
    }
}

impl Section {
    fn render(&self, h: &mut String) {
        let e = &self.evaluation;
        let _ = writeln!(h, "<section class=\"evaluation\">\n<h2>{}</h2>", escape(&self.heading));
        let _ = writeln!(h, "<p class=\"headline\">accuracy <b>{:.4}</b> on {} inputs · macro F1 {:.4}</p>", e.accuracy, e.n, e.macro_f1);
        // Per class.
        h.push_str("<table class=\"per-class\">\n<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>\n");
        for c in &e.classes {
            let _ = writeln!(h, "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>", escape(&c.label), c.precision, c.recall, c.f1, c.support);
        }
        h.push_str("</table>\n");
        // Confusion matrix: each cell shaded by its share of the row (the true class).
        h.push_str("<h3>Confusion matrix</h3>\n<p class=\"note\">rows: true class · columns: predicted class · shade: share of the row</p>\n<table class=\"confusion\">\n<tr><th></th>");
        for (j, label) in e.labels.iter().enumerate() {
            let _ = write!(h, "<th title=\"{}\">{j}</th>", escape(label));
        }
        h.push_str("</tr>\n");
        for (i, row) in e.confusion.iter().enumerate() {
            let total: u64 = row.iter().sum();
            let _ = write!(h, "<tr><th class=\"row\">{i} {}</th>", escape(e.labels.get(i).map(String::as_str).unwrap_or("?")));
            for (j, &count) in row.iter().enumerate() {
                let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
                let (bg, fg) = shade(share, i == j);
                let _ = write!(h, "<td style=\"background:{bg};color:{fg}\">{count}</td>");
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
        if !self.top_losses.is_empty() {
            let _ = writeln!(h, "<h3>Top losses</h3>");
            if let Some(note) = &self.gallery_note {
                let _ = writeln!(h, "<p class=\"note\">{}</p>", escape(note));
            }
            h.push_str("<div class=\"gallery\">\n");
            for item in &self.top_losses {
                item.render(h);
            }
            h.push_str("</div>\n");
        }
        h.push_str("</section>\n");
    }
}

impl TopLoss {
    fn render(&self, h: &mut String) {
        h.push_str("<figure class=\"top-loss\">");
        match &self.picture {
            Some(png) => {
                let _ = write!(h, "<img alt=\"{}\" src=\"{}\">", escape(&self.input), data_uri(png));
            }
            None => {
                let _ = write!(h, "<blockquote>{}</blockquote>", escape(&self.input));
            }
        }
        let name = match &self.picture {
            Some(_) => format!("<div class=\"file\">{}</div>", escape(&file_name(&self.input))),
            None => String::new(),
        };
        let _ = writeln!(
            h,
            "<figcaption>{name}<div>true <b>{}</b> ({:.1} %)</div><div>predicted <b>{}</b> ({:.1} %)</div><div class=\"loss\">loss {:.3}</div></figcaption></figure>",
            escape(&self.truth),
            self.p_truth * 100.0,
            escape(&self.predicted),
            self.p_predicted * 100.0,
            self.loss
        );
    }
}

/// The last component of a path (the whole string when it has none).
fn file_name(input: &str) -> String {
    Path::new(input).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| input.to_string())
}

/// A cell's background and text colour: the diagonal in blue, errors in red, darker with a
/// larger share of the row.
fn shade(share: f64, diagonal: bool) -> (String, &'static str) {
    let s = share.clamp(0.0, 1.0);
    let (r, g, b) = if diagonal { (31.0, 119.0, 180.0) } else { (214.0, 39.0, 40.0) };
    let mix = |c: f64| (255.0 - (255.0 - c) * s).round() as u8;
    (format!("#{:02x}{:02x}{:02x}", mix(r), mix(g), mix(b)), if s > 0.55 { "#fff" } else { "#000" })
}

/// Text for HTML (element content and attribute values).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A PNG as a `data:` URI.
fn data_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64(png))
}

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}\
h1{font-size:1.6em;margin-bottom:.3em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.6em 0}th,td{padding:.25em .6em;text-align:right;border:1px solid #e4e4e4}\
th{background:#f6f6f6}table.about th,table.about td{text-align:left}th.row{text-align:left;white-space:nowrap}\
table.per-class td:first-child{text-align:left}.confusion td{min-width:2.2em;text-align:center}\
.curves img{max-width:49%;height:auto}.headline{font-size:1.15em}.note{color:#666;font-size:.9em}\
.gallery{display:flex;flex-wrap:wrap;gap:12px}.top-loss{margin:0;width:232px;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}\
.top-loss img{width:224px;height:224px;image-rendering:auto;display:block}.top-loss blockquote{margin:0;font-size:.9em;max-height:10em;overflow:auto}\
figcaption{font-size:.85em;margin-top:4px}.file{font-family:monospace;overflow-wrap:anywhere}.loss{color:#a33}\
footer{margin-top:3em;color:#999;font-size:.8em}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn text_is_escaped_everywhere() {
        let labels = vec!["<b>cat</b>".to_string(), "dog & \"fox\"".to_string()];
        let evaluation = Evaluation::from_predictions(&labels, &[0, 1, 1], &[0, 0, 1]);
        let page = Page {
            title: "run <1>".into(),
            about: vec![("model".into(), "a'b".into())],
            curves: Vec::new(),
            sections: vec![Section {
                heading: "eval".into(),
                evaluation,
                top_losses: vec![TopLoss {
                    input: "<script>alert(1)</script>".into(),
                    truth: labels[1].clone(),
                    predicted: labels[0].clone(),
                    p_truth: 0.1,
                    p_predicted: 0.9,
                    loss: 2.3,
                    picture: None,
                }],
                gallery_note: None,
            }],
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<script>") && !html.contains("<b>cat</b>") && !html.contains("a'b"), "unescaped text in {html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && html.contains("dog &amp; &quot;fox&quot;"));
        assert_eq!(html.matches("<figure class=\"top-loss\">").count(), 1);
    }

    /// The page inlines every picture: nothing is fetched from elsewhere.
    #[test]
    fn the_page_is_self_contained() {
        let metrics: Vec<EpochMetrics> = (1..=3)
            .map(|epoch| EpochMetrics { epoch, stage: 0, lr: 0.01, train_loss: 1.0 / epoch as f64, train_accuracy: 0.5, val_loss: Some(0.9), val_accuracy: Some(0.6), seconds: 1.0 })
            .collect();
        let labels = vec!["a".to_string(), "b".to_string()];
        let page = Page {
            title: "r".into(),
            about: Vec::new(),
            curves: Chart::from_metrics(&metrics),
            sections: vec![Section { heading: "validation".into(), evaluation: Evaluation::from_predictions(&labels, &[0, 1], &[0, 1]), top_losses: Vec::new(), gallery_note: None }],
        };
        let html = page.render().unwrap();
        assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 2, "two curves inline");
        assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"));
        assert!(html.contains("accuracy <b>1.0000</b> on 2 inputs"));
    }

    #[test]
    fn shades_darken_with_the_share_of_the_row() {
        assert_eq!(shade(0.0, true).0, "#ffffff");
        assert_eq!(shade(1.0, false), ("#d62728".to_string(), "#fff"));
        assert_eq!(shade(1.0, true).0, "#1f77b4");
    }
}
