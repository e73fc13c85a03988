//! `ID=http:URL`: each request is a POST of its payload to the function's
//! own HTTP server (what of-watchdog's http mode and every OpenFaaS or
//! Knative function image serve on :8080), over kept-alive connections, at
//! most `pool` at once. 2xx: its body is the answer. 429 and 503: the
//! server is overloaded, the request goes back as BUSY and the dispatcher
//! re-steers it. Anything else: ERROR 6 with the status line.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{StatusCode, Uri};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::sync::Semaphore;

use super::{Call, FunctionConfig, Outcome};
use crate::workload::worker::MAX_PAYLOAD;

pub struct Upstream {
    url: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    /// One permit per connection the pool may hold.
    free: Semaphore,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("url", &self.url).finish()
    }
}

/// The header a request id goes in: FUNCTION_ID becomes X-Faas-Function-Id.
pub fn header_name(id: &str) -> String {
    let words: Vec<String> = id
        .split('_')
        .map(|w| {
            let mut w = w.to_ascii_lowercase();
            w[..1].make_ascii_uppercase();
            w
        })
        .collect();
    format!("X-Faas-{}", words.join("-"))
}

impl Upstream {
    pub fn new(url: &str, config: &FunctionConfig) -> Result<Upstream> {
        let parsed: Uri = url
            .parse()
            .with_context(|| format!("http:{url}: not a URL (want http://HOST:PORT/PATH)"))?;
        match parsed.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "http:{url}: this worker speaks plain HTTP to the function server beside it; serve the function on http:// (on loopback)"
            ),
            _ => bail!("http:{url}: want an http:// URL (for example http://127.0.0.1:8080/)"),
        }
        if parsed.authority().is_none() {
            bail!("http:{url}: the URL names no host");
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.pool as usize)
            .pool_idle_timeout(Duration::from_secs(60))
            // X-Faas-Request-Id as written, for servers that match case.
            .http1_title_case_headers(true)
            .build(connector);
        Ok(Upstream {
            url: parsed,
            client,
            free: Semaphore::new(config.pool as usize),
            timeout: config.timeout,
        })
    }

    pub async fn call(&self, call: &Call) -> Outcome {
        // Waiting for a connection is bounded too; a request that got
        // none was never sent, so it goes back as BUSY.
        let Ok(permit) = tokio::time::timeout(self.timeout, self.free.acquire()).await else {
            return Outcome::Busy(format!(
                "no free connection to {} within {} ms",
                self.url,
                self.timeout.as_millis()
            ));
        };
        let _permit = permit.expect("never closed");
        let mut request = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream");
        for (id, value) in call.ids() {
            request = request.header(header_name(id), value);
        }
        let request = match request.body(Full::new(Bytes::from(call.payload.clone()))) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("cannot make the HTTP request: {e}")),
        };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                // The cause names the real failure (refused, reset, ...).
                let cause = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                Outcome::Failed(format!("cannot reach {}: {e}{cause}", self.url))
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_PAYLOAD)
                .collect()
                .await
                .map(|b| b.to_bytes());
            Ok::<_, Outcome>((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Outcome::Failed(format!(
                    "{} did not answer within its timeout ({} ms)",
                    self.url,
                    self.timeout.as_millis()
                ))
            }
            Ok(Err(failed)) => return failed,
            Ok(Ok(answer)) => answer,
        };
        let line = status_line(status);
        match (status, body) {
            (s, Ok(body)) if s.is_success() => Outcome::Output(body.to_vec()),
            (s, Err(_)) if s.is_success() => Outcome::TooLarge(format!(
                "{} answered more than one datagram carries ({MAX_PAYLOAD} bytes)",
                self.url
            )),
            (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE, _) => {
                Outcome::Busy(format!("{} answered {line}", self.url))
            }
            (_, body) => {
                let first = body
                    .ok()
                    .map(|b| {
                        super::sandbox::last_line(b.split(|c| *c == b'\n').next().unwrap_or(&[]))
                    })
                    .filter(|l| !l.is_empty())
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default();
                Outcome::Failed(format!("{} answered {line}{first}", self.url))
            }
        }
    }
}

fn status_line(status: StatusCode) -> String {
    format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_in_x_faas_headers() {
        assert_eq!(header_name("FUNCTION_ID"), "X-Faas-Function-Id");
        assert_eq!(header_name("STEP"), "X-Faas-Step");
    }

    #[test]
    fn only_plain_http_urls() {
        let config = super::super::Defaults::default();
        let config = FunctionConfig {
            kind: super::super::Kind::Http(String::new()),
            timeout: config.timeout,
            max_inflight: None,
            pool: 2,
            env: vec![],
        };
        assert!(Upstream::new("https://x/", &config)
            .unwrap_err()
            .to_string()
            .contains("plain HTTP"));
        assert!(Upstream::new("ftp://x/", &config).is_err());
        assert!(Upstream::new("/path", &config).is_err());
    }
}
