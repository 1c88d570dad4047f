//! `--help` documents every flag: walks `graft --help` and every subcommand's (recursively) and
//! checks that each flag and argument has a description, and that each optional flag taking a
//! value shows `[default: …]` (clap's own, or written in the doc comment when it is computed).

use std::process::Command;

/// One entry of an `Options:` or `Arguments:` section.
#[derive(Debug)]
struct Entry {
    /// `--epochs` or `<IMAGES>`.
    name: String,
    /// Whether it takes a value (`--epochs <EPOCHS>`, every positional).
    takes_value: bool,
    /// The description, wrapped lines joined.
    text: String,
}

fn help(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_graft")).args(path).arg("--help").env("COLUMNS", "200").output().expect("run graft --help");
    assert!(out.status.success(), "graft {} --help failed: {}", path.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The lines of section `title` (up to the next blank line followed by a new section).
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = help.lines().skip_while(|l| *l != title);
    if lines.next().is_none() {
        return Vec::new();
    }
    lines.take_while(|l| l.is_empty() || l.starts_with(' ')).collect()
}

/// Parses clap's entries: a line starting with two spaces then `-`/`--`/`<` opens one; deeper
/// indented lines continue it (long help puts the description on the next lines).
fn entries(lines: &[&str]) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for line in lines {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let opens = indent <= 6 && (trimmed.starts_with('-') || trimmed.starts_with('<') || trimmed.starts_with('['));
        if opens {
            // `-h, --help`, `--epochs <EPOCHS>  text`, `<IMAGES>...  text`, `[PARTS]...`
            let mut head_end = trimmed.find("  ").unwrap_or(trimmed.len());
            let head = &trimmed[..head_end];
            let name = head
                .split(", ")
                .last()
                .unwrap_or(head)
                .split(' ')
                .next()
                .unwrap_or(head)
                .to_string();
            let takes_value = head.contains('<') || head.starts_with('[');
            head_end = head_end.min(trimmed.len());
            out.push(Entry { name, takes_value, text: trimmed[head_end..].trim().to_string() });
        } else if let Some(last) = out.last_mut() {
            if !trimmed.is_empty() {
                last.text.push(' ');
                last.text.push_str(trimmed);
            }
        }
    }
    out
}

/// The text without clap's bracketed notes (`[default: …]`, `[possible values: …]`, `[aliases: …]`).
fn description(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

/// The subcommands listed under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    section(help, "Commands:")
        .iter()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

/// Every problem found in `graft PATH --help` and below; `visited` collects the commands walked.
fn walk(path: Vec<String>, visited: &mut Vec<String>, problems: &mut Vec<String>) {
    let text = help(&path);
    let cmd = format!("graft {}", path.join(" ")).trim_end().to_string();
    visited.push(cmd.clone());
    let usage = text.lines().find_map(|l| l.strip_prefix("Usage: ")).unwrap_or("").to_string();
    for section_name in ["Options:", "Arguments:"] {
        for e in entries(&section(&text, section_name)) {
            if e.name == "--help" || e.name == "--version" {
                continue;
            }
            if description(&e.text).is_empty() {
                problems.push(format!("{cmd} {}: no description", e.name));
            }
            // A flag the usage line names outside [OPTIONS] is required: it has no default.
            let required = usage.split(' ').any(|w| w == e.name);
            if section_name == "Options:" && e.takes_value && !required && !e.text.contains("[default: ") {
                problems.push(format!("{cmd} {}: takes a value but shows no [default: …]", e.name));
            }
        }
    }
    for sub in subcommands(&text) {
        let mut p = path.clone();
        p.push(sub);
        walk(p, visited, problems);
    }
}

#[test]
fn every_flag_of_every_command_has_a_description_and_shows_its_default() {
    let mut visited = Vec::new();
    let mut problems = Vec::new();
    walk(Vec::new(), &mut visited, &mut problems);
    // The walk really reached the commands (and nested ones such as `cache merge`).
    for cmd in ["graft fit", "graft adapt", "graft eval", "graft data import", "graft cache merge", "graft pretrain", "graft probe", "graft advise"] {
        assert!(visited.iter().any(|v| v == cmd), "{cmd} was not walked: {visited:?}");
    }
    assert!(problems.is_empty(), "{} problems in --help:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn help_parser_sees_the_flags_and_defaults_of_fit() {
    // The checker above is only as good as its parsing: make sure it finds fit's flags, their
    // descriptions and defaults, and that a flag without them would be caught.
    let text = help(&["fit".to_string()]);
    let fit = entries(&section(&text, "Options:"));
    let epochs = fit.iter().find(|e| e.name == "--epochs").expect("fit has --epochs");
    assert!(epochs.takes_value);
    assert!(epochs.text.contains("[default: 10"), "{epochs:?}");
    assert!(!description(&epochs.text).is_empty());
    let train_bn = fit.iter().find(|e| e.name == "--train-bn").expect("fit has --train-bn");
    assert!(!train_bn.takes_value);
    assert!(fit.len() > 30, "only {} fit options parsed", fit.len());

    let bare = entries(&["  --epochs <EPOCHS>", "  --seed <SEED>  [default: 0]", "      --lr <LR>", "          Learning rate"]);
    assert_eq!(bare.len(), 3, "{bare:?}");
    assert!(description(&bare[0].text).is_empty());
    assert!(description(&bare[1].text).is_empty(), "a bare [default: …] is not a description");
    assert_eq!(description(&bare[2].text), "Learning rate");
    assert!(!bare[2].text.contains("[default: "));
}
