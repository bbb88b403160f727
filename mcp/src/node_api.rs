//! The four calls the tools make on a node's REPRAM HTTP API (`/v1/data/{key}`, `/v1/keys`),
//! blocking, with `ureq`. Owns URLs, status codes and the TTL headers' meaning; it never speaks
//! MCP (see `tools`).

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

/// Everything but the characters RFC 3986 leaves unreserved is escaped in a key: a key is one
/// path segment, whatever it holds (`/`, `?`, spaces).
const KEY_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How long one call may take, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A value larger than this is not read into memory (a node's default value limit is 1 MiB).
const VALUE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Keys asked for per page, and pages followed at most for one listing.
const KEYS_PAGE: usize = 1_000;
const KEYS_PAGES_MAX: usize = 10;

/// What went wrong talking to the node, in words an agent can act on.
#[derive(Debug)]
pub struct ApiError(pub String);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ureq::Error> for ApiError {
    fn from(error: ureq::Error) -> Self {
        ApiError(format!("the REPRAM node did not answer: {error}"))
    }
}

/// A stored value with its TTL figures, as the node's headers give them.
#[derive(Debug)]
pub struct Retrieved {
    pub data: String,
    pub created_at: Option<String>,
    pub remaining_ttl_seconds: u64,
}

/// The outcome of a write: the TTL the node applied (it clamps to its range) and whether
/// the copies it asked for were confirmed (REPRAM's 202 when not).
#[derive(Debug)]
pub struct Stored {
    pub ttl_seconds: Option<u64>,
    pub expires_at: Option<String>,
    pub confirmed: bool,
}

/// A page of keys and whether the listing was cut short.
#[derive(Debug)]
pub struct KeyList {
    pub keys: Vec<String>,
    pub next_cursor: Option<String>,
}

/// One node's HTTP API.
#[derive(Clone)]
pub struct NodeApi {
    base: String,
    agent: ureq::Agent,
    /// `Authorization` for a node with a client token.
    authorization: Option<String>,
}

impl NodeApi {
    /// `base` is the node's URL, e.g. `http://localhost:8080` (a trailing `/` is ignored);
    /// `token` the node's client token, if it wants one.
    pub fn new(base: &str, token: Option<&str>) -> NodeApi {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(CALL_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        NodeApi {
            base: base.trim_end_matches('/').to_string(),
            agent,
            authorization: token.map(|t| format!("Bearer {t}")),
        }
    }

    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    }

    fn data_url(&self, key: &str) -> String {
        format!(
            "{}/v1/data/{}",
            self.base,
            utf8_percent_encode(key, KEY_ESCAPES)
        )
    }

    pub fn store(
        &self,
        key: &str,
        data: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<Stored, ApiError> {
        let mut request = self.authorized(self.agent.put(self.data_url(key)));
        if let Some(ttl) = ttl_seconds {
            request = request.header("X-TTL", ttl.to_string());
        }
        let mut response = request.send(data.as_bytes())?;
        let status = response.status().as_u16();
        if status == 401 {
            return Err(unauthorized());
        }
        if status != 201 && status != 202 {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            return Err(ApiError(format!(
                "Store failed with status {status}: {}",
                body.trim()
            )));
        }
        #[derive(Deserialize, Default)]
        struct Answer {
            ttl_seconds: Option<u64>,
            expires_at: Option<String>,
        }
        let answer: Answer = response.body_mut().read_json().unwrap_or_default();
        Ok(Stored {
            ttl_seconds: answer.ttl_seconds,
            expires_at: answer.expires_at,
            confirmed: status == 201,
        })
    }

    /// The value of `key`, or `None` when it is missing or expired.
    pub fn retrieve(&self, key: &str) -> Result<Option<Retrieved>, ApiError> {
        let mut response = self.authorized(self.agent.get(self.data_url(key))).call()?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            401 => return Err(unauthorized()),
            status => return Err(ApiError(format!("Retrieve failed with status {status}"))),
        }
        let created_at = header(&response, "x-created-at");
        let remaining_ttl_seconds = header(&response, "x-remaining-ttl")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let bytes = response
            .body_mut()
            .with_config()
            .limit(VALUE_BYTES_MAX)
            .read_to_vec()?;
        Ok(Some(Retrieved {
            // Agents trade text; a binary value comes back with its odd bytes replaced.
            data: String::from_utf8_lossy(&bytes).into_owned(),
            created_at,
            remaining_ttl_seconds,
        }))
    }

    /// The remaining TTL of `key` in seconds, or `None` when it is missing or expired.
    pub fn exists(&self, key: &str) -> Result<Option<u64>, ApiError> {
        let response = self
            .authorized(self.agent.head(self.data_url(key)))
            .call()?;
        match response.status().as_u16() {
            200 => Ok(Some(
                header(&response, "x-remaining-ttl")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0),
            )),
            404 => Ok(None),
            401 => Err(unauthorized()),
            status => Err(ApiError(format!("Exists failed with status {status}"))),
        }
    }

    /// Live keys with `prefix`, sorted, following the node's pages up to a bound.
    pub fn list_keys(&self, prefix: Option<&str>) -> Result<KeyList, ApiError> {
        #[derive(Deserialize)]
        struct Page {
            keys: Vec<String>,
            next_cursor: Option<String>,
        }
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..KEYS_PAGES_MAX {
            let mut request = self
                .authorized(self.agent.get(format!("{}/v1/keys", self.base)))
                .query("limit", KEYS_PAGE.to_string());
            if let Some(prefix) = prefix {
                request = request.query("prefix", prefix);
            }
            if let Some(cursor) = &cursor {
                request = request.query("cursor", cursor);
            }
            let mut response = request.call()?;
            let status = response.status().as_u16();
            if status == 401 {
                return Err(unauthorized());
            }
            if status != 200 {
                return Err(ApiError(format!("List failed with status {status}")));
            }
            let page: Page = response
                .body_mut()
                .read_json()
                .map_err(|e| ApiError(format!("the node's key list is unreadable: {e}")))?;
            keys.extend(page.keys);
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        Ok(KeyList {
            keys,
            next_cursor: cursor,
        })
    }
}

fn unauthorized() -> ApiError {
    ApiError(
        "the REPRAM node wants its client token: set REPRAM_TOKEN (or --token-file) for \
         repram-mcp"
            .to_string(),
    )
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
