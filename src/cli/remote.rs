//! The CLI as a client of a running service (`--server URL`, `--token`).

use impresario::agents::RunUpdate;
use reqwest::{Method, Response};
use serde_json::Value;

/// A failed request, said for a person.
pub type Error = Box<dyn std::error::Error>;

/// A service at a URL.
pub struct Service {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Service {
    /// The service at `url` (`http://127.0.0.1:8080`), with its bearer token.
    pub fn new(url: &str, token: Option<String>) -> Self {
        Service {
            http: reqwest::Client::new(),
            url: url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// Sends a request to `path` (under `/v1`); an error status becomes the service's message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Response, Error> {
        let mut request = self.http.request(method, format!("{}/v1{path}", self.url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            format!(
                "cannot reach the service at {}: {e}; start it with `impresario serve`, or pass --server",
                self.url
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let message = response
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (set IMPRESARIO_TOKEN or pass --token)"
        } else {
            ""
        };
        Err(format!("the service answered {status}: {message}{hint}").into())
    }

    /// `GET /v1{path}` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        Ok(self.send(Method::GET, path, None).await?.json().await?)
    }

    /// `POST /v1{path}` with a JSON body, answered with JSON.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, Error> {
        Ok(self
            .send(Method::POST, path, Some(body))
            .await?
            .json()
            .await?)
    }

    /// The events of run `id`, from its first.
    pub async fn events(&self, id: &str) -> Result<Events, Error> {
        let response = self
            .send(Method::GET, &format!("/runs/{id}/events"), None)
            .await?;
        Ok(Events {
            response,
            buffer: Vec::new(),
        })
    }
}

/// A run's server-sent events.
pub struct Events {
    response: Response,
    buffer: Vec<u8>,
}

impl Events {
    /// The next event; `None` once the stream ended.
    pub async fn next(&mut self) -> Result<Option<RunUpdate>, Error> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let data: String = String::from_utf8_lossy(&frame)
                    .lines()
                    .filter_map(|line| line.strip_prefix("data: "))
                    .collect();
                if data.is_empty() {
                    continue; // a comment or keep-alive
                }
                let event = serde_json::from_str(&data).map_err(|e| {
                    format!("the service sent an event this CLI cannot read ({e}): {data}")
                })?;
                return Ok(Some(event));
            }
            match self.response.chunk().await? {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}
