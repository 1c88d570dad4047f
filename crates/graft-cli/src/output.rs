//! Where results go: human text or one JSON document on stdout.

use serde_json::Value;

pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints the result: `value` as JSON with `--json`, otherwise the text `human` renders.
    pub fn result(&self, value: &Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).expect("JSON values serialize"));
        } else {
            print!("{}", human());
        }
    }
}
