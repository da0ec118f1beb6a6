//! The HTTP plumbing shared by the providers: timeouts, body limits, and turning transport
//! failures and non-2xx answers into [`LlmError`]s.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::RequestBuilder;

use super::error::LlmError;
use super::retry;
use super::types::RateLimitInfo;

/// Connection settings of an HTTP provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Time allowed to establish a connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// Time allowed for one attempt, from connecting to the last byte of the body. Long
    /// non-streaming generations need minutes; retries each get the full time again.
    pub request_timeout: Duration,
    /// Larger response bodies are rejected as malformed.
    pub max_response_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            max_response_bytes: 16 << 20,
        }
    }
}

/// A 2xx answer, read in full.
pub(crate) struct Answer {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

pub(crate) fn build_client(config: &HttpConfig) -> Result<reqwest::Client, LlmError> {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .build()
        .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {}", chain(&e))))
}

/// A header value holding a secret: hidden from `Debug` output.
pub(crate) fn secret_header(value: &str) -> Result<HeaderValue, LlmError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        LlmError::Config("the API key contains characters not allowed in an HTTP header".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Sends one attempt and reads the whole body. Only a 2xx with a complete body is `Ok`.
pub(crate) async fn send(request: RequestBuilder, config: &HttpConfig) -> Result<Answer, LlmError> {
    let timeout = config.request_timeout;
    let mut response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| transport_error(&e, timeout))?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let body = read_body(&mut response, config.max_response_bytes, timeout).await;
    if !status.is_success() {
        // classify by status even if the error body could not be read
        let body = body.unwrap_or_default();
        return Err(LlmError::from_status(
            status.as_u16(),
            &body,
            retry::retry_after(&headers),
        ));
    }
    Ok(Answer {
        headers,
        body: body?,
    })
}

async fn read_body(
    response: &mut reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, LlmError> {
    let expected = response.content_length().unwrap_or(0).min(limit as u64) as usize;
    let mut body = Vec::with_capacity(expected);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(LlmError::MalformedResponse {
                        message: format!("response body larger than {limit} bytes"),
                        usage: None,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(LlmError::Timeout { after: timeout }),
            Err(e) => {
                return Err(LlmError::MalformedResponse {
                    message: format!(
                        "response body truncated or unreadable after {} bytes: {}",
                        body.len(),
                        chain(&e)
                    ),
                    usage: None,
                })
            }
        }
    }
}

fn transport_error(e: &reqwest::Error, timeout: Duration) -> LlmError {
    if e.is_timeout() {
        LlmError::Timeout { after: timeout }
    } else {
        LlmError::Network {
            message: chain(e),
            request_sent: !e.is_connect(),
        }
    }
}

/// An error and its sources, `: `-separated (reqwest's own message hides the cause).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A header as text.
pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

/// Remaining-requests and remaining-tokens headers, when the provider sent either.
pub(crate) fn rate_limit(
    headers: &HeaderMap,
    requests: &str,
    tokens: &str,
) -> Option<RateLimitInfo> {
    let number = |name| header_str(headers, name)?.trim().parse::<u64>().ok();
    let info = RateLimitInfo {
        remaining_requests: number(requests),
        remaining_tokens: number(tokens),
    };
    (info != RateLimitInfo::default()).then_some(info)
}

/// Parses a JSON body, or says what is wrong with it.
pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, LlmError> {
    serde_json::from_slice(body).map_err(|e| LlmError::MalformedResponse {
        message: format!("response body is not the expected JSON: {e}"),
        usage: None,
    })
}
