//! The wire protocol between oi and the runner inside a sandbox (docs/protocol.md):
//! one JSON object per line in each direction over the runner's stdin/stdout.
//! This layer only (de)serialises and frames; it knows nothing of Docker or sessions.

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks; the runner announces its own in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest frame oi reads from a runner, newline excluded. A longer one is a
/// protocol violation: oi stops reading that runner (the session restarts) instead of
/// buffering without bound. The runner's largest frame, an image at its 32 MiB limit,
/// is about 43 MiB of base64.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The image formats a runner may send (`image` frames), as MIME subtypes of `image/`.
/// Anything else is refused, whatever the runner says.
pub const IMAGE_FORMATS: &[&str] = &["png", "jpeg", "gif", "webp", "svg+xml"];

/// A request from oi to the runner.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request<'a> {
    /// Run a block. `command` and `extension` are set for file-run languages only.
    Exec {
        v: u32,
        id: u64,
        lang: &'a str,
        code: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        extension: Option<&'a str>,
    },
    /// Interrupt the running block `id` (SIGINT to the interpreter, SIGKILL to what it started).
    Interrupt { v: u32, id: u64 },
    /// Kill the interpreter running block `id` (it restarts for the next block).
    Kill { v: u32, id: u64 },
    /// Answered by `pong`, out of turn with any running block.
    Ping { v: u32, id: u64 },
    /// Stop every interpreter and exit.
    Shutdown { v: u32 },
}

impl Request<'_> {
    /// The request as one line of JSON, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("requests always serialise");
        line.push(b'\n');
        line
    }
}

/// How the runner says a block ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerStatus {
    Ok,
    Error,
    Interrupted,
    Crashed,
}

/// A frame from the runner to oi.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    Hello {
        v: u32,
        #[serde(default)]
        python: Option<String>,
    },
    Stdout {
        id: u64,
        data: String,
    },
    Stderr {
        id: u64,
        data: String,
    },
    Image {
        id: u64,
        format: String,
        data: String,
    },
    Notice {
        id: u64,
        message: String,
    },
    /// The block is about to run this line (Python, top-level statements).
    ActiveLine {
        id: u64,
        line: u32,
    },
    Done {
        id: u64,
        status: RunnerStatus,
        #[serde(default)]
        exit_code: Option<i32>,
        #[serde(default)]
        message: Option<String>,
    },
    Pong {
        id: u64,
    },
    Error {
        id: Option<u64>,
        message: String,
    },
    /// A frame type from a newer runner: ignored.
    #[serde(other)]
    Unknown,
}

impl Frame {
    /// The request the frame answers, if any.
    pub fn id(&self) -> Option<u64> {
        match self {
            Frame::Stdout { id, .. }
            | Frame::Stderr { id, .. }
            | Frame::Image { id, .. }
            | Frame::Notice { id, .. }
            | Frame::ActiveLine { id, .. }
            | Frame::Done { id, .. }
            | Frame::Pong { id } => Some(*id),
            Frame::Error { id, .. } => *id,
            Frame::Hello { .. } | Frame::Unknown => None,
        }
    }
}

/// Why a line from the runner is not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not JSON, or not a frame: its text (the start of it), for diagnostics. The
    /// stream goes on.
    Unreadable(String),
    /// A line longer than [`MAX_FRAME_BYTES`]: the stream cannot be trusted further.
    TooLong,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Unreadable(text) => write!(f, "unreadable frame from the runner: {text}"),
            FrameError::TooLong => write!(
                f,
                "the runner sent a frame over {} MiB, the protocol's limit",
                MAX_FRAME_BYTES / (1024 * 1024)
            ),
        }
    }
}

/// Splits the runner's byte stream into frames, in time linear in the bytes pushed
/// (each byte is looked at once when searching for the end of its line) and in memory
/// bounded by [`MAX_FRAME_BYTES`] plus one push.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if a whole line is buffered. After
    /// [`FrameError::TooLong`] the decoder should be dropped.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        loop {
            let Some(offset) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') else {
                self.scanned = self.buf.len();
                return (self.buf.len() > MAX_FRAME_BYTES).then_some(Err(FrameError::TooLong));
            };
            let end = self.scanned + offset;
            self.scanned = 0;
            if end > MAX_FRAME_BYTES {
                return Some(Err(FrameError::TooLong));
            }
            let line = self.buf.split_to(end);
            self.buf.advance(1);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(serde_json::from_slice(&line).map_err(|e| {
                let text = String::from_utf8_lossy(&line[..line.len().min(300)]).into_owned();
                FrameError::Unreadable(format!("{e}: {text}"))
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut dec = FrameDecoder::default();
        dec.push(br#"{"type":"stdout","id":3,"da"#);
        assert!(dec.next_frame().is_none());
        dec.push(b"ta\":\"a\\nb\"}\n{\"type\":\"done\",\"id\":3,\"status\":\"ok\"}\n");
        match dec.next_frame().unwrap().unwrap() {
            Frame::Stdout { id, data } => assert_eq!((id, data.as_str()), (3, "a\nb")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            dec.next_frame().unwrap().unwrap(),
            Frame::Done {
                id: 3,
                status: RunnerStatus::Ok,
                ..
            }
        ));
        assert!(dec.next_frame().is_none());
    }

    #[test]
    fn unknown_frame_types_are_tolerated_and_garbage_is_reported() {
        let mut dec = FrameDecoder::default();
        dec.push(b"{\"type\":\"telemetry\",\"x\":1}\nnot json\n");
        assert!(matches!(dec.next_frame().unwrap().unwrap(), Frame::Unknown));
        let err = dec.next_frame().unwrap().unwrap_err();
        assert!(err.to_string().contains("not json"), "{err}");
    }

    #[test]
    fn requests_are_single_lines() {
        let line = Request::Exec {
            v: 1,
            id: 7,
            lang: "python",
            code: "print(1)\nprint(2)",
            command: None,
            extension: None,
        }
        .to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["op"], "exec");
        assert_eq!(value["code"], "print(1)\nprint(2)");
    }
}
