//! The few PowerDNS REST API calls dnsteer's own ZSK needs: list a zone's cryptokeys, add a
//! key inactive and published, delete one. Plain HTTP/1.1, one connection per request (a few
//! requests a minute at most), bounded by a timeout. The API key is sent as `X-API-Key` and
//! never put in an error.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

use crate::config::ApiEndpoint;

/// Whole request limit (connect, send, read).
const TIMEOUT: Duration = Duration::from_secs(5);
/// Error bodies are cut to this many bytes in messages.
const BODY_IN_ERROR: usize = 200;

/// Why an API call failed. Messages name the URL and status, never the API key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("cannot read the API key file {file}: {source}")]
    KeyFile {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the API key file {file} is empty")]
    EmptyKey { file: String },
    #[error("cannot connect to the PowerDNS API at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the PowerDNS API at {url} did not answer within {TIMEOUT:?}")]
    Timeout { url: String },
    #[error("HTTP error talking to the PowerDNS API at {url}: {message}")]
    Http { url: String, message: String },
    #[error(
        "the PowerDNS API at {url} refused the API key ({status}): check api_key_file and PowerDNS's api-key"
    )]
    Unauthorized { url: String, status: u16 },
    #[error("{method} {path} answered {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("unexpected answer to {path}: {message}")]
    BadResponse { path: String, message: String },
}

impl ApiError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ApiError::KeyFile { .. } | ApiError::EmptyKey { .. } => "api_key_file",
            ApiError::Connect { .. } => "connect",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Http { .. } => "http",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::Status { .. } => "status",
            ApiError::BadResponse { .. } => "bad_response",
        }
    }
}

/// One key of a zone as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CryptoKey {
    pub(crate) id: u64,
    pub(crate) active: bool,
    pub(crate) published: bool,
    /// DNSKEY RDATA decoded from the `dnskey` field (`FLAGS 3 ALG BASE64`).
    pub(crate) dnskey_rdata: Vec<u8>,
}

/// A client for one PowerDNS server's API.
pub(crate) struct PdnsApi {
    endpoint: ApiEndpoint,
    server_id: String,
    api_key: Zeroizing<String>,
}

impl PdnsApi {
    /// Reads the API key from `key_file` (trimmed) now, so a rotated Secret is used on the next
    /// round.
    pub(crate) fn new(
        endpoint: &ApiEndpoint,
        server_id: &str,
        key_file: &std::path::Path,
    ) -> Result<PdnsApi, ApiError> {
        let file = key_file.display().to_string();
        let text = Zeroizing::new(std::fs::read_to_string(key_file).map_err(|source| {
            ApiError::KeyFile {
                file: file.clone(),
                source,
            }
        })?);
        let key = text.trim();
        if key.is_empty() {
            return Err(ApiError::EmptyKey { file });
        }
        Ok(PdnsApi {
            endpoint: endpoint.clone(),
            server_id: server_id.to_string(),
            api_key: Zeroizing::new(key.to_string()),
        })
    }

    fn keys_path(&self, zone: &str) -> String {
        format!("/api/v1/servers/{}/zones/{zone}/cryptokeys", self.server_id)
    }

    /// `GET .../zones/ZONE/cryptokeys`.
    pub(crate) async fn list_keys(&self, zone: &str) -> Result<Vec<CryptoKey>, ApiError> {
        let path = self.keys_path(zone);
        let body = self.call(Method::GET, &path, None, StatusCode::OK).await?;
        let bad = |message: String| ApiError::BadResponse {
            path: path.clone(),
            message,
        };
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| bad(format!("not a JSON list: {e}")))?;
        list.iter()
            .map(|k| {
                let id = k["id"]
                    .as_u64()
                    .ok_or_else(|| bad("a key without id".into()))?;
                let dnskey = k["dnskey"]
                    .as_str()
                    .ok_or_else(|| bad(format!("key {id} without dnskey")))?;
                Ok(CryptoKey {
                    id,
                    active: k["active"].as_bool().unwrap_or(false),
                    published: k["published"].as_bool().unwrap_or(true),
                    dnskey_rdata: dnskey_rdata(dnskey)
                        .ok_or_else(|| bad(format!("key {id}: unreadable dnskey")))?,
                })
            })
            .collect()
    }

    /// `POST .../zones/ZONE/cryptokeys`: a ZSK that PowerDNS publishes in the DNSKEY RRset and
    /// never signs with. `private_key` is BIND private-key text.
    pub(crate) async fn add_published_inactive_zsk(
        &self,
        zone: &str,
        private_key: &str,
    ) -> Result<(), ApiError> {
        let body = Zeroizing::new(
            serde_json::json!({
                "keytype": "zsk",
                "active": false,
                "published": true,
                "privatekey": private_key,
            })
            .to_string(),
        );
        let path = self.keys_path(zone);
        // The answer echoes the private key: dropped unread.
        self.call(Method::POST, &path, Some(body), StatusCode::CREATED)
            .await
            .map(drop)
    }

    /// `DELETE .../zones/ZONE/cryptokeys/ID`.
    pub(crate) async fn delete_key(&self, zone: &str, id: u64) -> Result<(), ApiError> {
        let path = format!("{}/{id}", self.keys_path(zone));
        self.call(Method::DELETE, &path, None, StatusCode::NO_CONTENT)
            .await
            .map(drop)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Zeroizing<String>>,
        want: StatusCode,
    ) -> Result<Bytes, ApiError> {
        let url = self.endpoint.url.clone();
        let exchange = self.exchange(method.clone(), path, body);
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::Timeout { url: url.clone() })??;
        if status == want || (status.is_success() && want.is_success()) {
            return Ok(bytes);
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(ApiError::Unauthorized {
                url,
                status: status.as_u16(),
            });
        }
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(BODY_IN_ERROR)])
            .replace(self.api_key.as_str(), "***");
        Err(ApiError::Status {
            method: match method {
                Method::GET => "GET",
                Method::POST => "POST",
                _ => "DELETE",
            },
            path: path.to_string(),
            status: status.as_u16(),
            body: text.trim().to_string(),
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Zeroizing<String>>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let url = &self.endpoint.url;
        let http = |e: hyper::Error| ApiError::Http {
            url: url.clone(),
            message: e.to_string(),
        };
        let tcp = tokio::net::TcpStream::connect(self.endpoint.authority.as_str())
            .await
            .map_err(|source| ApiError::Connect {
                url: url.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(http)?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.endpoint.authority.as_str())
            .header("X-API-Key", self.api_key.as_str());
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let payload = Full::new(Bytes::from(
            body.as_ref()
                .map(|b| b.as_bytes().to_vec())
                .unwrap_or_default(),
        ));
        let request = request.body(payload).map_err(|e| ApiError::Http {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let result = async {
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            let bytes = response.into_body().collect().await.map_err(http)?;
            Ok((status, bytes.to_bytes()))
        }
        .await;
        driver.abort();
        result
    }
}

/// DNSKEY RDATA from the API's presentation `FLAGS PROTOCOL ALGORITHM BASE64...` (the key may
/// be split by spaces).
fn dnskey_rdata(text: &str) -> Option<Vec<u8>> {
    let mut parts = text.split_whitespace();
    let flags: u16 = parts.next()?.parse().ok()?;
    let protocol: u8 = parts.next()?.parse().ok()?;
    let algorithm: u8 = parts.next()?.parse().ok()?;
    let key: String = parts.collect();
    let key = BASE64.decode(key).ok()?;
    let mut rdata = Vec::with_capacity(4 + key.len());
    rdata.extend_from_slice(&flags.to_be_bytes());
    rdata.push(protocol);
    rdata.push(algorithm);
    rdata.extend_from_slice(&key);
    Some(rdata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnskey_presentation_becomes_rdata() {
        let rdata = dnskey_rdata("256 3 13 AAEC Aw==").unwrap();
        assert_eq!(rdata, [1, 0, 3, 13, 0, 1, 2, 3]);
        assert!(dnskey_rdata("256 3 13 !!").is_none());
        assert!(dnskey_rdata("256 3").is_none());
    }
}
