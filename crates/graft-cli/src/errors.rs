//! An error as the one line the CLI prints. The library names a refused setting as `config.toml`
//! spells it (`invalid epochs `0`: …`); here it becomes the flag of the command that ran
//! (`invalid --epochs `0`: …`), the only place that knows the flags.

use std::error::Error;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};
use graft::GraftError;

/// Settings whose flag is not `--` and the setting with `_` as `-`: (setting, flag without
/// `--`). A flag whose visible alias is the setting's (`--batch`, alias `--batch-size`) needs no
/// entry.
pub(crate) const RENAMED: &[(&str, &str)] = &[("warmup_epochs", "warmup")];

/// Settings no command has a flag for (set by the library or through a positional argument):
/// printed as the library names them.
#[cfg(test)]
const NO_FLAG: &[&str] = &["parts", "stage", "token_batch"];

/// The command that ran (the leaf subcommand, e.g. `cache merge`) and its parsed arguments.
pub(crate) struct Ran {
    command: Command,
    matches: ArgMatches,
}

impl Ran {
    /// The leaf subcommand of `root` that `matches` (parsed by `root`) selected.
    pub(crate) fn new(root: Command, matches: &ArgMatches) -> Ran {
        let (mut command, mut matches) = (root, matches.clone());
        while let Some((name, sub)) = matches.subcommand() {
            let Some(next) = command.find_subcommand(name).cloned() else { break };
            let sub = sub.clone();
            command = next;
            matches = sub;
        }
        Ran { command, matches }
    }

    /// How `setting` reads in an error of this command: its flag (`--epochs`) when the command
    /// has one and its value came from that flag or a default; the setting itself (`min_delta`)
    /// when the command has no such flag, or the flag was not given and the settings came from
    /// a file (`--config`, `--resume`), which spells it so.
    fn name(&self, setting: &str) -> String {
        let Some(arg) = flag_of(&self.command, setting) else { return setting.to_string() };
        let given = |id: &str| self.matches.value_source(id) == Some(ValueSource::CommandLine);
        let from_file = ["config", "resume"].iter().any(|id| self.command.get_arguments().any(|a| a.get_id() == id) && given(id));
        if from_file && !given(arg.get_id().as_str()) {
            return setting.to_string();
        }
        format!("--{}", arg.get_long().unwrap_or(setting))
    }

    /// `err` and its causes as one line, outermost first, a cause left out where the line
    /// already holds its text.
    pub(crate) fn line(&self, err: &anyhow::Error) -> String {
        let mut line = String::new();
        for cause in err.chain() {
            let text = self.describe(cause);
            if line.is_empty() {
                line = text;
            } else if !line.contains(text.as_str()) {
                line.push_str(": ");
                line.push_str(&text);
            }
        }
        // Some library messages span lines; the contract is one line.
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn describe(&self, err: &(dyn Error + 'static)) -> String {
        match err.downcast_ref::<GraftError>() {
            Some(GraftError::InvalidSetting { setting, value, reason }) => {
                format!("invalid {} `{value}`: {reason}", self.name(setting))
            }
            _ => err.to_string(),
        }
    }
}

/// The argument of `command` that sets `setting`: the flag `--<setting with - for _>` (or its
/// [`RENAMED`] flag), matched by its name or a visible alias.
pub(crate) fn flag_of<'a>(command: &'a Command, setting: &str) -> Option<&'a Arg> {
    let long = match RENAMED.iter().find(|(s, _)| *s == setting) {
        Some((_, flag)) => flag.to_string(),
        None => setting.replace('_', "-"),
    };
    command.get_arguments().find(|a| {
        a.get_long() == Some(long.as_str()) || a.get_visible_aliases().is_some_and(|aliases| aliases.contains(&long.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

    fn ran(args: &[&str]) -> Ran {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        Ran::new(Cli::command(), &matches)
    }

    fn invalid(setting: &str, value: &str) -> anyhow::Error {
        GraftError::InvalidSetting { setting: setting.into(), value: value.into(), reason: "why".into() }.into()
    }

    /// Every command and subcommand, with its path (`cache merge`).
    fn commands() -> Vec<(String, Command)> {
        let mut all = Vec::new();
        let mut stack = vec![(String::new(), Cli::command())];
        while let Some((path, c)) = stack.pop() {
            for sub in c.get_subcommands() {
                stack.push((format!("{path} {}", sub.get_name()).trim().to_string(), sub.clone()));
            }
            all.push((path, c));
        }
        all
    }

    /// Each setting the library can name is a flag of some command (and shows in that
    /// command's --help), or is listed as having none; no listed one has a flag after all.
    #[test]
    fn every_library_setting_maps_to_a_flag_in_some_help() {
        let mut commands = commands();
        for (path, c) in &mut commands {
            // clap renders --help from the same arguments; checking the text keeps this honest.
            let help = c.render_long_help().to_string();
            for setting in graft::error::SETTINGS {
                if let Some(arg) = flag_of(c, setting) {
                    let flag = format!("--{}", arg.get_long().unwrap());
                    assert!(help.contains(&flag), "`graft {path} --help` does not show {flag}");
                }
            }
        }
        for setting in graft::error::SETTINGS {
            let with_flag: Vec<_> = commands.iter().filter(|(_, c)| flag_of(c, setting).is_some()).map(|(p, _)| p.as_str()).collect();
            if NO_FLAG.contains(setting) {
                assert!(with_flag.is_empty(), "`{setting}` is listed as having no flag, but {with_flag:?} have one");
            } else {
                assert!(!with_flag.is_empty(), "no command has a flag for the library's setting `{setting}`");
            }
        }
        for setting in NO_FLAG.iter().chain(RENAMED.iter().map(|(s, _)| s)) {
            assert!(graft::error::SETTINGS.contains(setting), "`{setting}` is not a library setting");
        }
    }

    #[test]
    fn settings_read_as_the_flags_of_the_command_that_ran() {
        let fit = ran(&["graft", "fit", "--data", "d", "--out", "o", "--epochs", "0", "--warmup", "1"]);
        assert_eq!(fit.line(&invalid("epochs", "0")), "invalid --epochs `0`: why");
        assert_eq!(fit.line(&invalid("warmup_epochs", "x")), "invalid --warmup `x`: why");
        assert_eq!(fit.line(&invalid("batch_size", "0")), "invalid --batch-size `0`: why");
        assert_eq!(fit.line(&invalid("max_tokens", "2")), "invalid max_tokens `2`: why");
        // `--batch` with the visible alias `--batch-size`.
        let eval = ran(&["graft", "eval", "--run", "r", "--data", "d"]);
        assert_eq!(eval.line(&invalid("batch_size", "0")), "invalid --batch `0`: why");
        // A setting of another command only.
        assert_eq!(eval.line(&invalid("lambda_schedule", "x")), "invalid lambda_schedule `x`: why");
        let merge = ran(&["graft", "cache", "merge", "--out", "m.safetensors", "a", "b"]);
        assert_eq!(merge.line(&invalid("out", "m")), "invalid --out `m`: why");
        assert_eq!(merge.line(&invalid("parts", "")), "invalid parts ``: why");
        // With a context around it, the context comes first.
        let err = invalid("epochs", "0").context("reading the run");
        assert_eq!(fit.line(&err), "reading the run: invalid --epochs `0`: why");
    }

    /// With `--config FILE`, a setting whose flag was not given came from the file: it is named
    /// as the file spells it. A flag given still reads as the flag.
    #[test]
    fn settings_from_a_config_file_keep_their_file_names() {
        let fit = ran(&["graft", "fit", "--config", "c.toml", "--out", "o", "--lr", "0"]);
        assert_eq!(fit.line(&invalid("min_delta", "nan")), "invalid min_delta `nan`: why");
        assert_eq!(fit.line(&invalid("warmup_epochs", "nan")), "invalid warmup_epochs `nan`: why");
        assert_eq!(fit.line(&invalid("lr", "0")), "invalid --lr `0`: why");
        let resume = ran(&["graft", "fit", "--resume", "run", "--epochs", "3"]);
        assert_eq!(resume.line(&invalid("epochs", "3")), "invalid --epochs `3`: why");
        assert_eq!(resume.line(&invalid("stages", "")), "invalid stages ``: why");
    }
}
