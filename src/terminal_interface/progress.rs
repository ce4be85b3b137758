//! Renders image-build progress: an indicatif bar over the Dockerfile's steps on a
//! terminal, plain lines otherwise (CI logs).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::core::code_interpreter::BuildProgress;

/// Shows one build. Quiet displays show nothing (JSON output).
pub struct BuildDisplay {
    bar: Option<ProgressBar>,
    quiet: bool,
    tty: bool,
}

impl BuildDisplay {
    pub fn new(quiet: bool) -> Self {
        BuildDisplay {
            bar: None,
            quiet,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn update(&mut self, progress: BuildProgress) {
        if self.quiet {
            return;
        }
        match progress {
            BuildProgress::Started { tag, base } => {
                let note = format!(
                    "building the sandbox image {tag} on {base} (a minute or two when nothing is cached)"
                );
                if self.tty {
                    let bar = ProgressBar::new(1);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar.println(note);
                    self.bar = Some(bar);
                } else {
                    eprintln!("oi: {note}");
                }
            }
            BuildProgress::Step { index, total, text } => match &self.bar {
                Some(bar) => {
                    bar.set_length(total as u64);
                    bar.set_position(index.saturating_sub(1) as u64);
                    bar.set_message(shorten(&text, 60));
                }
                None => eprintln!("oi: step {index}/{total}: {}", shorten(&text, 100)),
            },
            BuildProgress::Output(line) => {
                if let Some(bar) = &self.bar {
                    bar.set_message(shorten(&line, 60));
                }
            }
            BuildProgress::Finished { tag, built } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                if built {
                    eprintln!("oi: built the sandbox image {tag}");
                }
            }
        }
    }
}

impl Drop for BuildDisplay {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

/// A build line cut to `max` characters. The lines come from the build's own output
/// (a project's Dockerfile is not trusted), so they are neutralised too.
fn shorten(text: &str, max: usize) -> String {
    let text = super::sanitize::visible(text.trim(), super::sanitize::Kind::Name);
    if text.chars().count() <= max {
        return text.into_owned();
    }
    // One character is the mark of the cut.
    crate::core::text::shorten(&text, max.saturating_sub(1))
}
