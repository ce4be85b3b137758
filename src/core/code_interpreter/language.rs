//! Languages a session offers: the two stateful interpreters the runner keeps alive
//! (Python, shell) and any number declared by configuration that run as files.
//! Resolves the names and aliases Open Interpreter users know (`py`, `bash`, `sh`).
//!
//! The set is what the model is offered (the tool's `language` enum, the system
//! message) and all the session runs: a block in any other language is refused with
//! the list. Which languages, and which are declared, is the front end's choice
//! ([`Languages::choose`]); nothing here reads a file.

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

    /// The set a user's choice describes: `names` picks languages, in order, among the
    /// built-ins (by name or alias: `python`, `py`, `bash`) and the `declared` ones (by
    /// name); every declared language is offered, after the named ones. With no names,
    /// the built-ins come first, so declaring a language adds it to the defaults. A
    /// name that is neither is an error listing what could be named; a language named
    /// twice is offered once.
    ///
    /// # Examples
    ///
    /// ```
    /// use oi::core::code_interpreter::{Language, Languages};
    ///
    /// let python_only = Languages::choose(&["python".into()], Vec::new()).unwrap();
    /// assert_eq!(python_only.names(), ["python"]);
    /// let node = Language::file("node", "js", "node {file}");
    /// let added = Languages::choose(&[], vec![node.clone()]).unwrap();
    /// assert_eq!(added.names(), ["python", "shell", "node"]);
    /// let python_and_node = Languages::choose(&["py".into()], vec![node]).unwrap();
    /// assert_eq!(python_and_node.names(), ["python", "node"]);
    /// ```
    pub fn choose(names: &[String], declared: Vec<Language>) -> Result<Languages> {
        let declared_names: Vec<String> = declared.iter().map(|l| l.name.clone()).collect();
        let mut known = Languages::default();
        for language in declared {
            known.add(language);
        }
        if names.is_empty() {
            return Ok(known);
        }
        let mut chosen = Languages(Vec::new());
        let mut offer = |language: &Language| {
            if chosen.resolve(&language.name).is_err() {
                chosen.0.push(language.clone());
            }
        };
        for name in names {
            offer(known.resolve(name)?);
        }
        for language in known.iter() {
            if declared_names.contains(&language.name) {
                offer(language);
            }
        }
        Ok(chosen)
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
    fn a_choice_offers_the_named_languages_and_the_declared_ones() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let node = || Language::file("node", "js", "node {file}");
        let perl = || Language::file("perl", "pl", "perl {file}");
        let choose = |n: &[&str], d: Vec<Language>| Languages::choose(&names(n), d).unwrap();
        assert_eq!(choose(&[], vec![]), Languages::default());
        assert_eq!(choose(&["python"], vec![]).names(), ["python"]);
        assert_eq!(choose(&["bash", "PY"], vec![]).names(), ["shell", "python"]);
        assert_eq!(choose(&["python", "py"], vec![]).names(), ["python"]);
        assert_eq!(
            choose(&[], vec![node(), perl()]).names(),
            ["python", "shell", "node", "perl"]
        );
        assert_eq!(
            choose(&["perl", "python"], vec![node(), perl()]).names(),
            ["perl", "python", "node"]
        );
        assert_eq!(choose(&["node"], vec![node()]).names(), ["node"]);
        // Declared twice: the later declaration is the one, offered once.
        let later = Language::file("node", "mjs", "node {file}");
        let twice = choose(&[], vec![node(), later.clone()]);
        assert_eq!(twice.names(), ["python", "shell", "node"]);
        assert_eq!(twice.resolve("node").unwrap(), &later);
        let twice = choose(&["python"], vec![node(), later.clone()]);
        assert_eq!(twice.names(), ["python", "node"]);
        assert_eq!(twice.resolve("node").unwrap(), &later);
        let err = Languages::choose(&names(&["python", "cobol"]), vec![node()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown language `cobol`; available: python, shell, node"
        );
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
