//! The admin CLI's client for the admin API: the shared HTTP/1.1 client
//! ([`crate::client::http`]) with the CLI's error messages and the API's error shape.

use std::time::Duration;

use serde_json::Value;

use super::CliError;
use crate::client::http::{self, HttpError};

pub use crate::client::http::segment;

/// Time allowed for the whole exchange (a replay of many messages takes a while).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the admin API is and who we are.
#[derive(Debug, Clone)]
pub struct Client {
    inner: http::Client,
}

impl Client {
    pub fn new(
        url: &str,
        user: &str,
        password: &str,
        cacert: Option<&std::path::Path>,
    ) -> Result<Client, CliError> {
        let inner = http::Client::with_ca(url, user, password, cacert)
            .map_err(|e| CliError::Usage(format!("--admin-url {e}")))?;
        Ok(Client { inner })
    }

    pub fn url(&self) -> &str {
        self.inner.url()
    }

    /// Sends one request; `Ok` for 2xx (the JSON body, `Null` if empty), else the API's error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let (status, value) = self.raw(method, path, body).await?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(self.api_error(status, &value))
    }

    /// [`call`](Self::call) with extra request headers.
    pub async fn call_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Value, CliError> {
        let (status, value) = self.send(method, path, None, headers).await?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(self.api_error(status, &value))
    }

    /// Like [`call`](Self::call) but hands back any status with its body (health checks).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CliError> {
        self.send(method, path, body, &[]).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), CliError> {
        let url = || self.url().to_string();
        let request = self.inner.request_with_headers(method, path, body, headers);
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(HttpError::Unreachable(reason))) => Err(CliError::Unreachable { url: url(), reason }),
            Ok(Err(HttpError::Protocol(why))) => Err(CliError::Protocol(format!(
                "{} did not answer like the ferry admin API ({why}); is --admin-url the broker's HTTP listener?",
                url()
            ))),
            Ok(Err(HttpError::BadUrl(why))) => Err(CliError::Usage(format!("--admin-url {why}"))),
            Err(_) => Err(CliError::Unreachable {
                url: url(),
                reason: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            }),
        }
    }

    fn api_error(&self, status: u16, value: &Value) -> CliError {
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        match status {
            401 => CliError::Unauthorized {
                url: self.url().to_string(),
            },
            _ => CliError::Api { status, message },
        }
    }
}
