//! The HTTP plumbing shared by the providers: timeouts, body limits, and turning transport
//! failures and non-2xx answers into [`LlmError`]s.

use std::error::Error as _;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::RequestBuilder;

use super::error::LlmError;
use super::retry;
use super::types::{ChatResponse, RateLimitInfo};

/// Connection settings of an HTTP provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Time allowed to establish a connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// Time allowed for one attempt, from connecting to the last byte of the body, streamed or
    /// not (a stream past it is cut like a stalled one). Long generations need minutes;
    /// retries each get the full time again.
    pub request_timeout: Duration,
    /// Larger response bodies are rejected as malformed (a streamed answer: its events' data).
    pub max_response_bytes: usize,
    /// A streamed answer that sends nothing for this long has stalled: the attempt fails
    /// with [`LlmError::Timeout`] (retried only if nothing was delivered yet).
    pub stream_idle_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            max_response_bytes: 16 << 20,
            stream_idle_timeout: Duration::from_secs(60),
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
    let (headers, mut response) = start(request, config).await?;
    let body = read_body(
        &mut response,
        config.max_response_bytes,
        config.request_timeout,
    )
    .await?;
    Ok(Answer { headers, body })
}

/// Sends one attempt and returns a 2xx answer's headers, its body unread; a non-2xx answer is
/// read and classified.
async fn start(
    request: RequestBuilder,
    config: &HttpConfig,
) -> Result<(HeaderMap, reqwest::Response), LlmError> {
    let timeout = config.request_timeout;
    let mut response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| transport_error(&e, timeout))?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    if !status.is_success() {
        // classify by status even if the error body could not be read
        let body = read_body(&mut response, config.max_response_bytes, timeout).await;
        return Err(LlmError::from_status(
            status.as_u16(),
            &body.unwrap_or_default(),
            retry::retry_after(&headers),
        ));
    }
    Ok((headers, response))
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// A 2xx streamed answer: its headers, then its server-sent events one at a time.
pub(crate) struct EventStream {
    pub headers: HeaderMap,
    events: Events,
    config: HttpConfig,
    data_bytes: usize,
}

/// Sends one attempt whose answer is a stream of server-sent events.
pub(crate) async fn open_stream(
    request: RequestBuilder,
    config: &HttpConfig,
) -> Result<EventStream, LlmError> {
    let (headers, response) = start(request, config).await?;
    Ok(EventStream {
        headers,
        events: Box::pin(response.bytes_stream().eventsource()),
        config: config.clone(),
        data_bytes: 0,
    })
}

impl EventStream {
    /// The next event; `None` when the provider ended the stream. Nothing for
    /// `stream_idle_timeout` is a [`LlmError::Timeout`], a broken connection a
    /// [`LlmError::Network`], bytes that are not SSE a [`LlmError::MalformedResponse`].
    pub(crate) async fn next(&mut self) -> Result<Option<Event>, LlmError> {
        let idle = self.config.stream_idle_timeout;
        let next = tokio::time::timeout(idle, self.events.next())
            .await
            .map_err(|_| LlmError::Timeout { after: idle })?;
        let event = match next {
            None => return Ok(None),
            Some(Ok(event)) => event,
            Some(Err(EventStreamError::Transport(e))) if e.is_timeout() => {
                return Err(LlmError::Timeout {
                    after: self.config.request_timeout,
                })
            }
            Some(Err(EventStreamError::Transport(e))) => {
                return Err(LlmError::Network {
                    message: format!("the stream broke: {}", chain(&e)),
                    request_sent: true,
                })
            }
            Some(Err(e)) => return Err(malformed(format!("the answer is not SSE: {e}"))),
        };
        self.data_bytes += event.data.len();
        if self.data_bytes > self.config.max_response_bytes {
            let limit = self.config.max_response_bytes;
            return Err(malformed(format!(
                "streamed answer larger than {limit} bytes"
            )));
        }
        Ok(Some(event))
    }
}

/// A [`LlmError::MalformedResponse`] without usage.
pub(crate) fn malformed(message: String) -> LlmError {
    LlmError::MalformedResponse {
        message,
        usage: None,
    }
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

/// The headers in which a provider names its request id and remaining rate limits.
pub(crate) struct HeaderNames {
    pub request_id: &'static str,
    pub remaining_requests: &'static str,
    pub remaining_tokens: &'static str,
}

/// `response` with the request id (when the header has one) and rate-limit headers.
pub(crate) fn with_headers(
    mut response: ChatResponse,
    headers: &HeaderMap,
    names: &HeaderNames,
) -> ChatResponse {
    response.request_id = header_str(headers, names.request_id)
        .map(str::to_owned)
        .or(response.request_id);
    response.rate_limit = rate_limit(headers, names.remaining_requests, names.remaining_tokens);
    response
}

/// Remaining-requests and remaining-tokens headers, when the provider sent either.
fn rate_limit(headers: &HeaderMap, requests: &str, tokens: &str) -> Option<RateLimitInfo> {
    let number = |name| header_str(headers, name)?.trim().parse::<u64>().ok();
    let info = RateLimitInfo {
        remaining_requests: number(requests),
        remaining_tokens: number(tokens),
    };
    (info != RateLimitInfo::default()).then_some(info)
}

/// Parses a JSON body, or says what is wrong with it.
pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, LlmError> {
    serde_json::from_slice(body)
        .map_err(|e| malformed(format!("response body is not the expected JSON: {e}")))
}

/// Parses one streamed event's JSON data, or says which event was wrong and how.
pub(crate) fn parse_event<'a, T: serde::Deserialize<'a>>(event: &'a Event) -> Result<T, LlmError> {
    serde_json::from_str(&event.data).map_err(|e| {
        let data: String = event.data.chars().take(120).collect();
        malformed(format!(
            "streamed event `{}` is not the expected JSON ({e}): {data:?}",
            event.event
        ))
    })
}
