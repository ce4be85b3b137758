//! Server-sent events: bytes in, `{event, data}` frames out, with an idle timeout on
//! every read so that a stalled server ends in an error rather than a hang.
//!
//! Generic transport: knows the SSE format (fields, comments, CRLF, multi-line data,
//! frames split anywhere across reads), nothing of any model's protocol.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::error::{LlmError, Result};

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The longest line of an event stream, and the most `data` one frame may gather. Real
/// frames are a few KiB (a whole tool call in one frame at most); past this the server
/// is refused rather than buffered.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// The most bytes one reply's body may carry, frames and keep-alives and all: a reply at
/// its size cap in one-token frames is a few hundred MiB; an endless stream of pings or
/// empty deltas is stopped here instead of burning CPU for ever.
pub const MAX_BODY: u64 = 1024 * 1024 * 1024;

/// Incremental parser; feed it bytes as they come. Linear in what it is fed: each byte
/// is scanned for a line end once, and moved at most once when consumed lines are
/// dropped from the buffer.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    /// Where the unconsumed part of `buffer` starts.
    start: usize,
    /// Up to here the buffer holds no line end (the scan resumes from it).
    scanned: usize,
    event: Option<String>,
    data: Vec<String>,
    /// Bytes in `data`, joined.
    data_len: usize,
}

impl SseDecoder {
    /// Adds bytes and returns the frames they complete. A line or a frame over
    /// [`MAX_LINE`] is [`LlmError::Malformed`]; the decoder is not usable after an error.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseFrame>> {
        self.buffer.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            let from = self.scanned.max(self.start);
            let Some(offset) = self.buffer[from..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buffer.len();
                break;
            };
            let end = from + offset;
            let mut line = &self.buffer[self.start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            // Comments (keep-alives) are skipped before any copy.
            let line =
                (!line.starts_with(b":")).then(|| String::from_utf8_lossy(line).into_owned());
            self.start = end + 1;
            self.scanned = self.start;
            if let Some(frame) = self.line(line.as_deref().unwrap_or(":"))? {
                frames.push(frame);
            }
        }
        let pending = self.buffer.len() - self.start;
        if pending > MAX_LINE {
            return Err(too_long(&self.buffer[self.start..]));
        }
        // Drop consumed lines once they outweigh what is kept: what moves is never more
        // than what is dropped, so compaction stays linear however long a line grows.
        if self.start > 0 && self.start >= pending {
            self.buffer.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        Ok(frames)
    }

    /// Whatever is left when the stream ends: a final frame without its blank line.
    pub fn finish(&mut self) -> Result<Option<SseFrame>> {
        let rest = self.buffer.split_off(self.start);
        self.buffer.clear();
        self.start = 0;
        self.scanned = 0;
        if !rest.is_empty() {
            let rest = String::from_utf8_lossy(&rest).into_owned();
            if let Some(frame) = self.line(rest.trim_end_matches('\r'))? {
                return Ok(Some(frame));
            }
        }
        Ok(self.dispatch())
    }

    /// Bytes received that did not make a complete line (tests check nothing is kept
    /// longer than needed).
    #[cfg(test)]
    fn pending(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    fn line(&mut self, line: &str) -> Result<Option<SseFrame>> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                self.data_len += value.len() + 1;
                if self.data_len > MAX_LINE {
                    return Err(too_long(value.as_bytes()));
                }
                self.data.push(value.to_string());
            }
            _ => {} // id, retry: not used by model APIs
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseFrame> {
        let event = self.event.take();
        self.data_len = 0;
        if self.data.is_empty() {
            return None;
        }
        Some(SseFrame {
            event,
            data: std::mem::take(&mut self.data).join("\n"),
        })
    }
}

fn too_long(start: &[u8]) -> LlmError {
    let shown = &start[..start.len().min(200)];
    LlmError::Malformed {
        detail: format!(
            "a line or event of its stream is longer than {}, the most oi reads",
            super::error::size(MAX_LINE as u64)
        ),
        text: format!("{}…", String::from_utf8_lossy(shown)),
    }
}

/// Turns a body's byte stream into frames. A read that takes longer than `idle` ends the
/// stream with [`LlmError::Stalled`]; a transport error with [`LlmError::Truncated`]; a
/// line over [`MAX_LINE`] with [`LlmError::Malformed`]; a body over [`MAX_BODY`] with
/// [`LlmError::ReplyTooLarge`]. The stream ends (`None`) when the body does, or after
/// the first error.
pub fn frames<S, E>(body: S, timing: Timing) -> impl Stream<Item = Result<SseFrame>>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    frames_within(body, timing, MAX_BODY)
}

/// How long a stream may take: per read (`idle`) and in all (`total`), so that a server
/// that trickles a keep-alive just inside the idle timeout cannot hold a turn forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub idle: Duration,
    pub total: Duration,
}

fn frames_within<S, E>(
    body: S,
    timing: Timing,
    max_body: u64,
) -> impl Stream<Item = Result<SseFrame>>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    struct State<S> {
        body: S,
        decoder: SseDecoder,
        queue: std::collections::VecDeque<SseFrame>,
        received: u64,
        done: bool,
        deadline: tokio::time::Instant,
    }
    let now = tokio::time::Instant::now();
    let state = State {
        body,
        decoder: SseDecoder::default(),
        queue: Default::default(),
        received: 0,
        done: false,
        // Checked: a caller's Duration::MAX means "no limit", not a panic.
        deadline: now
            .checked_add(timing.total)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600)),
    };
    let idle = timing.idle;
    futures::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(frame) = st.queue.pop_front() {
                return Some((Ok(frame), st));
            }
            if st.done {
                return None;
            }
            let left = st
                .deadline
                .saturating_duration_since(tokio::time::Instant::now());
            let failure = match tokio::time::timeout(idle.min(left), st.body.next()).await {
                Err(_) if left <= idle => LlmError::TooSlow {
                    after: timing.total,
                },
                Err(_) => LlmError::Stalled { after: idle },
                Ok(None) => {
                    st.done = true;
                    match st.decoder.finish() {
                        Ok(frame) => {
                            st.queue.extend(frame);
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                Ok(Some(Err(e))) => LlmError::Truncated {
                    detail: format!("connection error: {e}"),
                },
                Ok(Some(Ok(bytes))) => {
                    st.received = st.received.saturating_add(bytes.len() as u64);
                    if st.received > max_body {
                        LlmError::ReplyTooLarge {
                            what: "the model's stream",
                            limit: max_body,
                        }
                    } else {
                        match st.decoder.feed(&bytes) {
                            Ok(frames) => {
                                st.queue.extend(frames);
                                continue;
                            }
                            Err(e) => e,
                        }
                    }
                }
            };
            st.done = true;
            st.queue.clear();
            return Some((Err(failure), st));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn regression_a_trickling_server_cannot_hold_a_reply_for_ever() {
        // A keep-alive comment every 20 ms: never idle for the 200 ms allowed, and no
        // reply either; the whole reply may take 500 ms.
        let body = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Some((Ok::<_, String>(Bytes::from_static(b": still here\n\n")), ()))
        });
        let started = std::time::Instant::now();
        let mut s = Box::pin(frames(
            Box::pin(body),
            Timing {
                idle: Duration::from_millis(200),
                total: Duration::from_millis(500),
            },
        ));
        assert!(matches!(
            s.next().await,
            Some(Err(LlmError::TooSlow { .. }))
        ));
        assert!(s.next().await.is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn parses_frames_split_anywhere() {
        let text = "event: message_start\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n";
        let whole = SseDecoder::default().feed(text.as_bytes()).unwrap();
        for split in 0..text.len() {
            let mut d = SseDecoder::default();
            let mut got = d.feed(&text.as_bytes()[..split]).unwrap();
            got.extend(d.feed(&text.as_bytes()[split..]).unwrap());
            assert_eq!(got, whole, "split at {split}");
        }
        assert_eq!(
            whole,
            vec![
                SseFrame {
                    event: Some("message_start".into()),
                    data: "{\"a\":\n1}".into()
                },
                SseFrame {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }

    #[test]
    fn a_last_frame_without_blank_line_is_kept() {
        let mut d = SseDecoder::default();
        assert!(d.feed(b"data: x").unwrap().is_empty());
        assert_eq!(d.finish().unwrap().unwrap().data, "x");
    }

    /// D10: a 50 MB line took 90 s (the buffer was rescanned from its start for every
    /// read). Now a line just under the limit, fed in small reads, is one linear pass,
    /// and one over it is refused as soon as it passes the limit.
    #[test]
    fn a_long_line_is_read_in_linear_time_and_refused_past_the_limit() {
        let piece = vec![b'a'; 4096];
        let started = std::time::Instant::now();
        let mut d = SseDecoder::default();
        d.feed(b"data: ").unwrap();
        let mut fed = 6;
        while fed + piece.len() < MAX_LINE - 16 {
            assert!(d.feed(&piece).unwrap().is_empty());
            fed += piece.len();
        }
        let frames = d.feed(b"\n\n").unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data.len(), fed - 6);
        assert!(d.pending().is_empty());
        // Quadratic, this took minutes; linear, well under a second even unoptimised.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );

        let mut d = SseDecoder::default();
        let mut result = Ok(Vec::new());
        for _ in 0..(MAX_LINE / piece.len() + 2) {
            result = d.feed(&piece);
            if result.is_err() {
                break;
            }
        }
        let Err(LlmError::Malformed { detail, text }) = result else {
            panic!("a line over the limit is refused: {result:?}");
        };
        assert_eq!(
            detail,
            "a line or event of its stream is longer than 16 MiB, the most oi reads"
        );
        assert_eq!(text, format!("{}…", "a".repeat(200)));
    }

    #[test]
    fn many_data_lines_cannot_make_an_endless_frame() {
        let mut d = SseDecoder::default();
        let line = format!("data: {}\n", "b".repeat(1 << 20));
        let mut result = Ok(Vec::new());
        for _ in 0..20 {
            result = d.feed(line.as_bytes());
            if result.is_err() {
                break;
            }
        }
        assert!(
            matches!(result, Err(LlmError::Malformed { .. })),
            "{result:?}"
        );
        // Many small frames are no problem at all.
        let mut d = SseDecoder::default();
        let frame = "data: {}\n\n".repeat(100_000);
        assert_eq!(d.feed(frame.as_bytes()).unwrap().len(), 100_000);
        assert!(d.pending().is_empty());
    }

    #[tokio::test]
    async fn an_endless_body_of_keep_alives_is_stopped() {
        let ping = Bytes::from(": ping\n\n".repeat(1024));
        let body = futures::stream::iter(std::iter::repeat(ping).map(Ok::<_, String>));
        let mut s = Box::pin(frames_within(
            body,
            Timing {
                idle: Duration::from_secs(5),
                total: Duration::from_secs(60),
            },
            1 << 20,
        ));
        assert!(matches!(
            s.next().await,
            Some(Err(LlmError::ReplyTooLarge { limit: 1048576, .. }))
        ));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_silent_body_stalls() {
        let body = futures::stream::pending::<std::result::Result<Bytes, String>>();
        let mut s = Box::pin(frames(
            body,
            Timing {
                idle: Duration::from_millis(50),
                total: Duration::from_secs(60),
            },
        ));
        assert!(matches!(
            s.next().await,
            Some(Err(LlmError::Stalled { .. }))
        ));
        assert!(s.next().await.is_none());
    }
}
