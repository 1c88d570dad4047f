//! Where results go: human text or one JSON document on stdout.

use std::io::Write;

use serde_json::Value;

pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints the result: `value` as JSON with `--json`, otherwise the text `human` renders.
    /// A closed pipe (`graft … | head`) is not an error.
    pub fn result(&self, value: &Value, human: impl FnOnce() -> String) {
        let text = if self.json {
            serde_json::to_string_pretty(value).expect("JSON values serialize") + "\n"
        } else {
            human()
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush());
    }
}
