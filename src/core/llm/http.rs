//! The HTTP both built-in providers share: one client, a JSON POST whose failures are
//! mapped to [`LlmError`]s a user can act on, and a JSON GET for model lists.
//!
//! Knows HTTP statuses and the common shapes of error bodies, not any provider's
//! streaming protocol.

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::error::{LlmError, Result};
use super::Endpoint;

/// The longest error body quoted back to the user.
const DETAIL_MAX: usize = 600;
/// The most of an error body read: real error bodies are a few hundred bytes; a
/// hostile server's endless one must not grow memory.
const ERROR_BODY_MAX: usize = 64 * 1024;
/// The most of a `/models` list read (a thousand models is ~100 KiB).
const MODELS_BODY_MAX: usize = 1024 * 1024;
/// The most model names kept from a list, and the longest name kept.
const MODELS_MAX: usize = 1000;
const MODEL_NAME_MAX: usize = 200;
/// How long reading an error body or a model list may take in all.
const BODY_TIME: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured: a server asking for longer gets this (the loop may
/// cap it further, `RetryPolicy::max_retry_after`).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The client for an endpoint. Proxies come from the endpoint only: core reads no
/// environment (reqwest would read `HTTPS_PROXY` itself), the front end passes them in.
pub(crate) fn client(endpoint: &Endpoint) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(endpoint.connect_timeout)
        .user_agent(concat!("oi/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if let Some(url) = endpoint.proxy.as_deref().filter(|p| !p.is_empty()) {
        let proxy = reqwest::Proxy::all(url)
            .map_err(|e| LlmError::Client(format!("bad proxy URL {url}: {e}")))?
            .no_proxy(reqwest::NoProxy::from_string(
                endpoint.no_proxy.as_deref().unwrap_or(""),
            ));
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|e| LlmError::Client(e.to_string()))
}

/// Joins a base URL and a path without doubling or losing a slash.
pub(crate) fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// What the loop needs to classify an HTTP failure.
pub(crate) struct Failure<'a> {
    pub url: &'a str,
    pub model: &'a str,
    pub key_setting: &'a str,
}

/// Sends a request; a non-2xx status becomes the matching [`LlmError`]. A server that
/// accepts the connection but sends no response head within `idle` has stalled, as a
/// silent body would.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    failure: Failure<'_>,
    idle: Duration,
) -> Result<reqwest::Response> {
    let response = tokio::time::timeout(idle, request.send())
        .await
        .map_err(|_| LlmError::Stalled { after: idle })?
        .map_err(|e| LlmError::Connect {
            url: failure.url.to_string(),
            detail: crate::core::error_chain::error_chain(&e),
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(response.headers());
    let body = read_capped(response, ERROR_BODY_MAX).await;
    Err(classify(
        status.as_u16(),
        &String::from_utf8_lossy(&body),
        retry_after,
        failure,
    ))
}

/// At most `max` bytes of a body, read for at most [`BODY_TIME`]: what arrived by then.
async fn read_capped(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = max.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= max {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(BODY_TIME, read).await;
    body
}

fn classify(
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
    failure: Failure<'_>,
) -> LlmError {
    let detail = error_detail(body);
    let url = failure.url.to_string();
    let lower = detail.to_lowercase();
    match status {
        401 | 403 => LlmError::Auth {
            url,
            status,
            detail,
            key_setting: failure.key_setting.to_string(),
        },
        404 if lower.contains("model") => LlmError::UnknownModel {
            model: failure.model.to_string(),
            url,
            available: Vec::new(),
        },
        429 => LlmError::RateLimited {
            url,
            detail,
            retry_after,
        },
        // Ollama: "... does not support tools"; llama.cpp: "tools param requires --jinja".
        400..=499
            if (lower.contains("tool") || lower.contains("function"))
                && (lower.contains("support") || lower.contains("jinja")) =>
        {
            LlmError::ToolsUnsupported { detail }
        }
        // Servers that load models on demand answer an unknown one with 400.
        400 if lower.contains("model")
            && (lower.contains("not found") || lower.contains("does not exist")) =>
        {
            LlmError::UnknownModel {
                model: failure.model.to_string(),
                url,
                available: Vec::new(),
            }
        }
        404 => LlmError::Rejected {
            url: url.clone(),
            status,
            detail: format!(
                "{detail} (is the base URL right? OpenAI-compatible servers usually end in /v1)"
            ),
        },
        500..=599 => LlmError::Server {
            url,
            status,
            detail,
        },
        _ => LlmError::Rejected {
            url,
            status,
            detail,
        },
    }
}

/// The human part of an error body: `error.message`, `error` as a string, `message`,
/// `detail`, or the body itself, shortened.
pub(crate) fn error_detail(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let found = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
    });
    let text = found.unwrap_or_else(|| body.trim().to_string());
    if text.is_empty() {
        return "(empty response)".into();
    }
    shorten(&text, DETAIL_MAX)
}

pub(crate) use crate::core::text::shorten;

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?)
}

/// `Retry-After` in seconds, capped at [`MAX_RETRY_AFTER`]. Negative numbers, NaN and
/// infinities are no wait at all (`None`: the loop's own backoff applies), and so is the
/// HTTP-date form, which is not read.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())).ok()
}

/// `GET {base}/models` → the ids in `data[].id` (OpenAI and Anthropic agree on this).
/// Only used to explain an unknown model, so a list too long to read whole is cut
/// ([`MODELS_BODY_MAX`], [`MODELS_MAX`]) and unreadable answers are no list.
pub(crate) async fn model_ids(request: reqwest::RequestBuilder) -> Result<Vec<String>> {
    let response = request
        .timeout(BODY_TIME)
        .send()
        .await
        .map_err(|e| LlmError::Client(e.to_string()))?;
    if !response.status().is_success() {
        return Ok(Vec::new());
    }
    let body = read_capped(response, MODELS_BODY_MAX).await;
    Ok(parse_model_ids(&body))
}

fn parse_model_ids(body: &[u8]) -> Vec<String> {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = body
        .get("data")
        .or_else(|| body.get("models"))
        .and_then(|d| d.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|m| {
                    m.get("id")
                        .or_else(|| m.get("name"))
                        .and_then(|i| i.as_str())
                        .map(|id| shorten(id, MODEL_NAME_MAX))
                })
                .take(MODELS_MAX)
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> Failure<'static> {
        Failure {
            url: "http://x/v1",
            model: "m",
            key_setting: "KEY",
        }
    }

    #[test]
    fn statuses_become_errors_users_can_act_on() {
        let body = r#"{"error":{"message":"Incorrect API key provided"}}"#;
        assert!(matches!(
            classify(401, body, None, f()),
            LlmError::Auth { .. }
        ));
        let body =
            r#"{"error":{"message":"The model `m` does not exist","code":"model_not_found"}}"#;
        assert!(matches!(
            classify(404, body, None, f()),
            LlmError::UnknownModel { .. }
        ));
        assert!(matches!(
            classify(404, r#"{"error":"model 'm' not found"}"#, None, f()),
            LlmError::UnknownModel { .. }
        ));
        assert!(matches!(
            classify(
                400,
                r#"{"error":"registry.ollama.ai/library/gemma:2b does not support tools"}"#,
                None,
                f()
            ),
            LlmError::ToolsUnsupported { .. }
        ));
        assert!(matches!(
            classify(503, "busy", None, f()),
            LlmError::Server { status: 503, .. }
        ));
        assert!(matches!(
            classify(404, "Not Found", None, f()),
            LlmError::Rejected { .. }
        ));
    }

    #[test]
    fn detail_prefers_the_message() {
        assert_eq!(error_detail(r#"{"error":{"message":"nope"}}"#), "nope");
        assert_eq!(
            error_detail(r#"{"type":"error","error":{"type":"x","message":"bad"}}"#),
            "bad"
        );
        assert_eq!(error_detail("plain text"), "plain text");
        assert_eq!(error_detail(""), "(empty response)");
    }

    #[test]
    fn retry_after_is_a_sane_wait_or_none() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-0"), Some(Duration::ZERO));
        for capped in [
            "61",
            "1e30",
            "1.7976931348623157e308",
            "18446744073709551616",
        ] {
            assert_eq!(parse_retry_after(capped), Some(MAX_RETRY_AFTER), "{capped}");
        }
        for none in [
            "-1",
            "-1e30",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "",
            "soon",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(none), None, "{none}");
        }
    }

    #[test]
    fn model_lists_are_cut_not_trusted() {
        let many: Vec<serde_json::Value> = (0..5000)
            .map(|i| serde_json::json!({"id": format!("m{i:05}")}))
            .collect();
        let body = serde_json::json!({"data": many}).to_string();
        assert_eq!(parse_model_ids(body.as_bytes()).len(), MODELS_MAX);
        let long = serde_json::json!({"data": [{"id": "x".repeat(10_000)}]}).to_string();
        assert!(parse_model_ids(long.as_bytes())[0].len() <= MODEL_NAME_MAX + 3);
        assert!(parse_model_ids(b"{\"data\": [{\"id\": \"a\"").is_empty());
    }

    #[test]
    fn urls_join_cleanly() {
        assert_eq!(
            join("http://h/v1/", "/chat/completions"),
            "http://h/v1/chat/completions"
        );
    }
}
