//! Languages a session offers: the two stateful interpreters the runner keeps alive
//! (Python, shell) and any number declared by configuration that run as files.
//! Resolves the names and aliases Open Interpreter users know (`py`, `bash`, `sh`).

use serde::{Deserialize, Serialize};

use super::error::{Result, SandboxError};

/// How the runner executes a language's blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LanguageKind {
    /// The runner's long-lived Python interpreter: state persists across blocks.
    Python,
    /// The runner's long-lived bash: cwd, variables, functions and aliases persist.
    Shell,
    /// Each block is written to a file with this extension and `command` runs it;
    /// `{file}` in the command is replaced by the file's path (appended if absent).
    File { extension: String, command: String },
}

/// One language offered to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Language {
    /// The canonical name, as the model and the user write it (`python`, `shell`, `node`).
    pub name: String,
    /// Other names that select it.
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(flatten)]
    pub kind: LanguageKind,
}

impl Language {
    /// Python, with the alias `py`.
    pub fn python() -> Self {
        Language {
            name: "python".into(),
            aliases: vec!["py".into(), "python3".into()],
            kind: LanguageKind::Python,
        }
    }

    /// Shell (bash), with the aliases `bash` and `sh`.
    pub fn shell() -> Self {
        Language {
            name: "shell".into(),
            aliases: vec!["bash".into(), "sh".into(), "zsh".into()],
            kind: LanguageKind::Shell,
        }
    }

    /// A language run from a file by a command, e.g. `Language::file("node", "js", "node {file}")`.
    pub fn file(name: &str, extension: &str, command: &str) -> Self {
        Language {
            name: name.into(),
            aliases: Vec::new(),
            kind: LanguageKind::File {
                extension: extension.into(),
                command: command.into(),
            },
        }
    }

    fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// The languages enabled for a session, in the order they are offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Languages(Vec<Language>);

impl Default for Languages {
    fn default() -> Self {
        Languages(vec![Language::python(), Language::shell()])
    }
}

impl Languages {
    /// A set made of exactly these languages (the "limited functions" of the roadmap).
    pub fn new(languages: Vec<Language>) -> Self {
        Languages(languages)
    }

    /// Adds a language, replacing one of the same name.
    pub fn add(&mut self, language: Language) {
        self.0
            .retain(|l| !l.name.eq_ignore_ascii_case(&language.name));
        self.0.push(language);
    }

    /// The canonical names, for error messages and tool schemas.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|l| l.name.clone()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Language> {
        self.0.iter()
    }

    /// Finds a language by name or alias, ignoring case and a leading dot or
    /// surrounding spaces; an unknown name is an error listing the available ones.
    pub fn resolve(&self, name: &str) -> Result<&Language> {
        let wanted = name.trim().trim_start_matches('.');
        self.0
            .iter()
            .find(|l| l.answers_to(wanted))
            .ok_or_else(|| SandboxError::UnknownLanguage {
                name: name.to_string(),
                available: self.names(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_aliases() {
        let langs = Languages::default();
        assert_eq!(langs.resolve("py").unwrap().name, "python");
        assert_eq!(langs.resolve("Python").unwrap().name, "python");
        assert_eq!(langs.resolve("bash").unwrap().name, "shell");
        assert_eq!(langs.resolve("sh").unwrap().name, "shell");
    }

    #[test]
    fn unknown_language_lists_the_available_ones() {
        let mut langs = Languages::default();
        langs.add(Language::file("node", "js", "node {file}"));
        let err = langs.resolve("cobol").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown language `cobol`; available: python, shell, node"
        );
    }
}
