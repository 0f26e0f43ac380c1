//! A tiny HTTP/1.1 JSON client over a tokio `TcpStream`, shared by the admin CLI (which talks
//! to the admin API) and the alert webhooks (`observe/alerts.rs`), so neither depends on the
//! other.
//!
//! The crate has no HTTP client among its dependencies (hyper comes in through axum for the
//! server side, and reqwest is a dev-dependency), and both users need very little: one request
//! per connection (`Connection: close`), optional basic auth, a JSON body, and the status plus
//! JSON answer back, with `Content-Length` or chunked bodies. `https://` goes through rustls
//! (trusting `--cacert`'s CA, or the system bundle), with the same exchange over the TLS stream.

use std::time::Duration;

use std::sync::Arc;

use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of answer read: an admin API browse of 10000 messages fits comfortably.
const MAX_RESPONSE: usize = 256 * 1024 * 1024;
/// Time allowed for connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request failed; the caller words it for its own audience.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not one this client can use (the message says why, with an example).
    #[error("{0}")]
    BadUrl(String),
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered, but not with an HTTP/1.1 response this client understands.
    #[error("{0}")]
    Protocol(String),
}

/// Where requests go and with which credentials.
#[derive(Debug, Clone)]
pub struct Client {
    /// As given, for messages.
    url: String,
    host_port: String,
    /// Path prefix from the URL (without a trailing `/`).
    base: String,
    /// Basic credentials, base64; `None` sends no Authorization header.
    auth: Option<String>,
    /// For `https://`: the TLS configuration and the name the certificate must carry.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// A percent-encoded path segment (a vhost `/` becomes `%2F`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for `url` (`http://host[:port][/prefix]`); empty `user` and `password` send
    /// no credentials.
    pub fn new(url: &str, user: &str, password: &str) -> Result<Client, HttpError> {
        Self::with_ca(url, user, password, None)
    }

    /// Like [`new`](Self::new); an `https://` URL trusts the CA certificates in `ca_file`
    /// (PEM), or the system's CA bundle without one.
    pub fn with_ca(
        url: &str,
        user: &str,
        password: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Client, HttpError> {
        let (rest, secure) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => {
                return Err(HttpError::BadUrl(format!(
                    "`{url}` must start with http:// or https://; e.g. http://127.0.0.1:8080"
                )))
            }
        };
        let (host_port, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if host_port.is_empty() {
            return Err(HttpError::BadUrl(format!(
                "`{url}` has no host; e.g. http://127.0.0.1:8080"
            )));
        }
        let host_port = if host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host_port.to_string()
        } else if secure {
            format!("{host_port}:443")
        } else {
            format!("{host_port}:80")
        };
        let tls = if secure {
            let host = host_port
                .rsplit_once(':')
                .map_or(host_port.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| HttpError::BadUrl(format!("`{url}`: `{host}` is not a host name")))?;
            let config =
                crate::tls::client_config(ca_file).map_err(|e| HttpError::BadUrl(e.to_string()))?;
            Some((config, name))
        } else {
            None
        };
        Ok(Client {
            tls,
            url: url.trim_end_matches('/').to_string(),
            host_port,
            base: base.to_string(),
            auth: (!user.is_empty() || !password.is_empty())
                .then(|| crate::util::base64_encode(format!("{user}:{password}").as_bytes())),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request and reads the whole answer: its status and JSON body (`Null` when
    /// empty, a JSON string when the body is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), HttpError> {
        self.request_with_headers(method, path, body, &[]).await
    }

    /// [`request`](Self::request) with extra headers (`X-Reason` of a connection close). A
    /// header whose name or value holds a line break is refused (it would split the request).
    pub async fn request_with_headers(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), HttpError> {
        if headers
            .iter()
            .any(|(k, v)| k.contains(['\r', '\n']) || v.contains(['\r', '\n']))
        {
            return Err(HttpError::BadUrl(
                "a request header may not contain a line break".into(),
            ));
        }
        let unreachable = HttpError::Unreachable;
        let stream = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(&self.host_port),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let target = format!("{}{path}", self.base);
        let target = if target.is_empty() { "/" } else { &target };
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: ferry-cli/{}\r\n",
            self.host_port,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(auth) = &self.auth {
            request.push_str(&format!("Authorization: Basic {auth}\r\n"));
        }
        if body.is_some() {
            request.push_str("Content-Type: application/json\r\n");
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
        request.push_str(&payload);
        let raw = match &self.tls {
            None => exchange(stream, request.as_bytes()).await?,
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let handshake = connector.connect(name.clone(), stream);
                let stream = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(unreachable(format!("TLS handshake failed: {e}"))),
                    Err(_) => return Err(unreachable("TLS handshake timed out".into())),
                };
                exchange(stream, request.as_bytes()).await?
            }
        };
        if raw.len() > MAX_RESPONSE {
            return Err(HttpError::Protocol(format!(
                "answered with more than {MAX_RESPONSE} bytes"
            )));
        }
        let (status, body) = parse_response(&raw).map_err(HttpError::Protocol)?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            // A non-JSON answer (a proxy's error page, say) still gets shown.
            Value::String(String::from_utf8_lossy(&body).into_owned())
        });
        Ok((status, value))
    }
}

/// Writes the request and reads the answer to the end (bounded by [`MAX_RESPONSE`]).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<Vec<u8>, HttpError> {
    let unreachable = HttpError::Unreachable;
    stream
        .write_all(request)
        .await
        .map_err(|e| unreachable(format!("sending the request failed: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| unreachable(format!("sending the request failed: {e}")))?;
    let mut raw = Vec::new();
    let read = (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await;
    match read {
        Ok(_) => Ok(raw),
        // Servers often close a TLS connection without close_notify after `Connection:
        // close`; the answer is whole if it parses.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(unreachable(format!("reading the answer failed: {e}"))),
    }
}

/// Splits a whole HTTP/1.1 response into its status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(format!("status line `{status_line}`"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("status line `{status_line}`"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        }
    }
    if chunked {
        return Ok((status, dechunk(body)?));
    }
    Ok(match length {
        Some(n) if n <= body.len() => (status, body[..n].to_vec()),
        Some(_) => return Err("answer shorter than its Content-Length".into()),
        None => (status, body.to_vec()),
    })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&body[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_or_chunks_parse() {
        let r = b"HTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(r).unwrap(), (201, b"{\"a\":1}".to_vec()));
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(c).unwrap(), (200, b"{\"a\":1}".to_vec()));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}").is_err());
    }

    #[test]
    fn urls_and_segments() {
        let c = Client::new("http://localhost:9000/ferry/", "a", "b").unwrap();
        assert_eq!(c.host_port, "localhost:9000");
        assert_eq!(c.base, "/ferry");
        assert_eq!(Client::new("http://h", "a", "b").unwrap().host_port, "h:80");
        assert!(Client::new("ftp://h", "a", "b").is_err());
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("a b.c"), "a%20b.c");
    }
}
