//! Saved conversations: one JSON-lines file of LMC messages per conversation, appended
//! as each message completes (a crash or kill loses at most the message in flight),
//! plus a small `.meta.json` beside it (when, which model, the first words) for
//! `oi --conversations`.
//!
//! Layout: `$XDG_DATA_HOME/oi/conversations/<id>.jsonl` and `<id>.meta.json`, where the
//! id is the UTC start time and a random suffix, so names sort by age.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::core::messages::{parse_conversation, Message, MessageType, Role};

/// What is known about a saved conversation without reading it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub id: String,
    /// `2026-11-25 10:12` (UTC).
    pub created: String,
    pub model: String,
    /// The first words of the first message.
    pub title: String,
}

/// The conversation being written.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    meta: Meta,
    file: File,
}

impl Store {
    /// Starts a new conversation file.
    pub fn create(dir: &Path, model: &str) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (id, created) = new_id();
        let meta = Meta {
            id,
            created,
            model: model.to_string(),
            title: String::new(),
        };
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(format!("{}.jsonl", meta.id)))
            .with_context(|| format!("creating a conversation file in {}", dir.display()))?;
        let store = Store {
            dir: dir.to_path_buf(),
            meta,
            file,
        };
        store.write_meta()?;
        Ok(store)
    }

    /// Opens a saved conversation to go on with it: its messages, and the store that
    /// appends to it. `id` may be a prefix; empty means the latest.
    pub fn resume(dir: &Path, id: &str, model: &str) -> anyhow::Result<(Store, Vec<Message>)> {
        let all = list(dir)?;
        let meta = if id.is_empty() {
            all.into_iter().next()
        } else {
            let matching: Vec<Meta> = all.into_iter().filter(|m| m.id.starts_with(id)).collect();
            if matching.len() > 1 {
                bail!(
                    "`{id}` matches {} conversations: {}",
                    matching.len(),
                    matching
                        .iter()
                        .map(|m| m.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            matching.into_iter().next()
        };
        let Some(mut meta) = meta else {
            bail!(
                "no saved conversation {}in {} (`oi --conversations` lists them)",
                if id.is_empty() {
                    String::new()
                } else {
                    format!("`{id}` ")
                },
                dir.display()
            );
        };
        let path = dir.join(format!("{}.jsonl", meta.id));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let messages =
            parse_conversation(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        meta.model = model.to_string();
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let store = Store {
            dir: dir.to_path_buf(),
            meta,
            file,
        };
        store.write_meta()?;
        Ok((store, messages))
    }

    pub fn id(&self) -> &str {
        &self.meta.id
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.jsonl", self.meta.id))
    }

    /// Appends a completed message.
    pub fn append(&mut self, message: &Message) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(message)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("saving to {}", self.path().display()))?;
        if self.meta.title.is_empty()
            && message.role == Role::User
            && message.kind == MessageType::Message
        {
            self.meta.title = title_of(&message.content);
            self.write_meta()?;
        }
        Ok(())
    }

    /// Replaces the file's messages (after `%undo`, `%load_message`, `%reset`).
    pub fn rewrite(&mut self, messages: &[Message]) -> anyhow::Result<()> {
        let path = self.path();
        let tmp = path.with_extension("jsonl.tmp");
        let mut text = String::new();
        for m in messages {
            text.push_str(&serde_json::to_string(m)?);
            text.push('\n');
        }
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.meta.title = messages
            .iter()
            .find(|m| m.role == Role::User && m.kind == MessageType::Message)
            .map(|m| title_of(&m.content))
            .unwrap_or_default();
        self.write_meta()
    }

    fn write_meta(&self) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{}.meta.json", self.meta.id));
        std::fs::write(&path, serde_json::to_string_pretty(&self.meta)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Saved conversations, newest first.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Meta>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut metas: Vec<Meta> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".meta.json"))
        .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
        .collect();
    metas.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(metas)
}

fn title_of(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(10).collect();
    let mut title = words.join(" ");
    if title.chars().count() > 60 {
        title = title.chars().take(59).collect::<String>() + "…";
    }
    title
}

/// `20261125-101200-3fa9` and `2026-11-25 10:12`.
fn new_id() -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let suffix = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    (
        format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{suffix:04x}"),
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}"),
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }

    #[test]
    fn a_conversation_is_appended_listed_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path(), "gpt-4o").unwrap();
        store
            .append(&Message::user("analyse the sales figures please"))
            .unwrap();
        store.append(&Message::assistant("Sure.")).unwrap();
        let id = store.id().to_string();
        drop(store);
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].title, "analyse the sales figures please");
        assert_eq!(listed[0].model, "gpt-4o");
        let (mut store, messages) = Store::resume(dir.path(), &id[..10], "claude").unwrap();
        assert_eq!(
            messages,
            vec![
                Message::user("analyse the sales figures please"),
                Message::assistant("Sure.")
            ]
        );
        store.append(&Message::user("more")).unwrap();
        let (_, messages) = Store::resume(dir.path(), "", "claude").unwrap();
        assert_eq!(messages.len(), 3);
        assert!(Store::resume(dir.path(), "nope", "m")
            .unwrap_err()
            .to_string()
            .contains("no saved conversation `nope`"));
    }
}
