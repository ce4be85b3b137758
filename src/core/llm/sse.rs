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

/// Incremental parser; feed it bytes as they come.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseDecoder {
    /// Adds bytes and returns the frames they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseFrame> {
        self.buffer.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(pos) = self.buffer.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if let Some(frame) = self.line(&line) {
                frames.push(frame);
            }
        }
        frames
    }

    /// Whatever is left when the stream ends: a final frame without its blank line.
    pub fn finish(&mut self) -> Option<SseFrame> {
        if !self.buffer.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buffer)).into_owned();
            if let Some(frame) = self.line(rest.trim_end_matches('\r')) {
                return Some(frame);
            }
        }
        self.dispatch()
    }

    /// Bytes received that did not make a complete line.
    pub fn pending(&self) -> &[u8] {
        &self.buffer
    }

    fn line(&mut self, line: &str) -> Option<SseFrame> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {} // id, retry: not used by model APIs
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseFrame> {
        let event = self.event.take();
        if self.data.is_empty() {
            return None;
        }
        Some(SseFrame {
            event,
            data: std::mem::take(&mut self.data).join("\n"),
        })
    }
}

/// Turns a body's byte stream into frames. A read that takes longer than `idle` ends the
/// stream with [`LlmError::Stalled`]; a transport error with [`LlmError::Truncated`].
/// The stream ends (`None`) when the body does.
pub fn frames<S, E>(body: S, idle: Duration) -> impl Stream<Item = Result<SseFrame>>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    struct State<S> {
        body: S,
        decoder: SseDecoder,
        queue: std::collections::VecDeque<SseFrame>,
        done: bool,
    }
    let state = State {
        body,
        decoder: SseDecoder::default(),
        queue: Default::default(),
        done: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(frame) = st.queue.pop_front() {
                return Some((Ok(frame), st));
            }
            if st.done {
                return None;
            }
            match tokio::time::timeout(idle, st.body.next()).await {
                Err(_) => {
                    st.done = true;
                    return Some((Err(LlmError::Stalled { after: idle }), st));
                }
                Ok(None) => {
                    st.done = true;
                    if let Some(frame) = st.decoder.finish() {
                        st.queue.push_back(frame);
                    }
                }
                Ok(Some(Err(e))) => {
                    st.done = true;
                    return Some((
                        Err(LlmError::Truncated {
                            detail: format!("connection error: {e}"),
                        }),
                        st,
                    ));
                }
                Ok(Some(Ok(bytes))) => {
                    let frames = st.decoder.feed(&bytes);
                    st.queue.extend(frames);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_split_anywhere() {
        let text = "event: message_start\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n";
        let whole = SseDecoder::default().feed(text.as_bytes());
        for split in 0..text.len() {
            let mut d = SseDecoder::default();
            let mut got = d.feed(&text.as_bytes()[..split]);
            got.extend(d.feed(&text.as_bytes()[split..]));
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
        assert!(d.feed(b"data: x").is_empty());
        assert_eq!(d.finish().unwrap().data, "x");
    }

    #[tokio::test]
    async fn a_silent_body_stalls() {
        let body = futures::stream::pending::<std::result::Result<Bytes, String>>();
        let mut s = Box::pin(frames(body, Duration::from_millis(50)));
        assert!(matches!(
            s.next().await,
            Some(Err(LlmError::Stalled { .. }))
        ));
        assert!(s.next().await.is_none());
    }
}
