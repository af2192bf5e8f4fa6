//! The Web Push provider: the payload encrypted for the subscription (RFC 8291, aes128gcm) by
//! `web-push-native`, and a VAPID header signed with the project's key (RFC 8292); the POST
//! goes through a client that applies the operator's network policy to every address it
//! connects to.

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use nimbus_model::net::{NetPolicy, internal_range};
use nimbus_store::push::{Claimed, Subscription};
use web_push_native::jwt_simple::algorithms::{
    ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair,
};
use web_push_native::jwt_simple::claims::Claims;
use web_push_native::p256::PublicKey;
use web_push_native::{Auth, WebPushBuilder};

use crate::{Attempt, ProjectKeys, Provider, PushConfig, PushError, Result, SubscriptionInput};

/// How long the VAPID JWT is valid (RFC 8292: at most 24 hours). Independent of the message's
/// TTL, which is a header of its own.
const VAPID_VALIDITY: Duration = Duration::from_secs(12 * 3600);

/// The VAPID `Authorization` header (RFC 8292): an ES256 JWT for the push service's origin, and
/// the project's public key. Signed here rather than by web-push-native's `with_vapid`, whose
/// audience is `scheme://host` and so drops a non-default port: the RFC asks for the origin of
/// the push resource, which keeps it (RFC 6454), and a push service on its own port refuses the
/// token otherwise.
fn vapid_header(
    endpoint: &http::Uri,
    key: &ES256KeyPair,
    subject: &str,
) -> std::result::Result<http::HeaderValue, String> {
    let audience = origin(endpoint).ok_or("the endpoint has no scheme or host")?;
    let claims =
        Claims::create(VAPID_VALIDITY.into()).with_audience(audience).with_subject(subject);
    let token = key.sign(claims).map_err(|e| e.to_string())?;
    let public = URL_SAFE_NO_PAD.encode(key.public_key().public_key().to_bytes_uncompressed());
    http::HeaderValue::from_str(&format!("vapid t={token}, k={public}")).map_err(|e| e.to_string())
}

/// The ASCII serialization of a URL's origin: the port only when it is not the scheme's default.
fn origin(uri: &http::Uri) -> Option<String> {
    let (scheme, host) = (uri.scheme_str()?, uri.host()?);
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        _ => 0,
    };
    Some(match uri.port_u16() {
        Some(port) if port != default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

pub struct WebPush {
    client: reqwest::Client,
    policy: Arc<NetPolicy>,
    allow_http: bool,
    subject: String,
    timeout: Duration,
}

/// An address the network policy denies; found in a send error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to addresses the network policy denies ({range})")]
struct Denied {
    host: String,
    range: &'static str,
}

/// Resolves host names and keeps only the addresses the policy permits, so the connection goes
/// to a checked address and nothing resolves the name again. (IP literals never reach a
/// resolver: [`WebPush::check_url`] checks them.)
struct PolicyResolver(Arc<NetPolicy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let first_denied = addrs.first().and_then(|a| internal_range(a.ip()));
            let permitted: Vec<SocketAddr> =
                addrs.into_iter().filter(|a| policy.permits(a.ip())).collect();
            if permitted.is_empty() {
                let range = first_denied.unwrap_or("no address");
                return Err(Box::new(Denied { host, range }) as _);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>> {
    let value = value.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(value)
        .or_else(|_| URL_SAFE.decode(value))
        .map_err(|_| PushError::Invalid("invalid_keys", format!("keys.{field} is not base64url")))
}

fn keys(p256dh: &str, auth: &str) -> Result<(PublicKey, Auth)> {
    let public = PublicKey::from_sec1_bytes(&b64("p256dh", p256dh)?).map_err(|_| {
        PushError::Invalid("invalid_keys", "keys.p256dh is not a P-256 public key".into())
    })?;
    let auth = b64("auth", auth)?;
    if auth.len() != 16 {
        return Err(PushError::Invalid("invalid_keys", "keys.auth is 16 bytes".into()));
    }
    Ok((public, Auth::clone_from_slice(&auth)))
}

impl WebPush {
    pub fn new(config: &PushConfig) -> Result<WebPush> {
        let policy = Arc::new(NetPolicy::new(config.allow_nets.clone()));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
            // A redirect would go to an unchecked URL; proxies from the environment would
            // bypass the policy.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.request_timeout)
            .pool_max_idle_per_host(config.concurrency.max(1))
            .build()
            .map_err(|e| PushError::Internal(format!("building the push HTTP client: {e}")))?;
        Ok(WebPush {
            client,
            policy,
            allow_http: config.allow_http,
            subject: config.vapid_subject.clone(),
            timeout: config.request_timeout,
        })
    }

    /// Scheme, host, and an IP-literal host against the policy.
    fn check_url(&self, endpoint: &str) -> Result<http::Uri> {
        let bad = |m: &str| PushError::Invalid("invalid_endpoint", m.to_owned());
        let uri: http::Uri = endpoint.parse().map_err(|_| bad("the endpoint is not a URL"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            _ => return Err(bad("the endpoint must be an https:// URL")),
        }
        let authority = uri.authority().ok_or_else(|| bad("the endpoint has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("the endpoint cannot contain credentials"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>()
            && !self.policy.permits(ip)
        {
            return Err(PushError::Forbidden(format!(
                "the endpoint's address is denied by the network policy ({})",
                internal_range(ip).unwrap_or("internal")
            )));
        }
        Ok(uri)
    }
}

/// The longest `Retry-After` honoured: a push service asking for more is asked again sooner
/// (the message's TTL and the attempt limit still bound the retries).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` (RFC 9110 section 10.2.3): delay-seconds, or an HTTP-date (parsed by
/// `httpdate`: IMF-fixdate and the two obsolete forms RFC 9110 says recipients accept) taken
/// relative to `now`; a date in the past means "now". Anything else counts as absent, and the
/// backoff applies.
pub(crate) fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[async_trait::async_trait]
impl Provider for WebPush {
    fn kind(&self) -> &'static str {
        "webpush"
    }

    fn validate(&self, input: &SubscriptionInput) -> Result<()> {
        self.check_url(&input.endpoint)?;
        keys(&input.keys.p256dh, &input.keys.auth)?;
        Ok(())
    }

    async fn deliver(&self, keys_: &ProjectKeys, sub: &Subscription, msg: &Claimed) -> Attempt {
        let rejected = |error: String| Attempt::Rejected { status: None, error };
        let uri = match self.check_url(&sub.endpoint) {
            Ok(u) => u,
            Err(e) => return rejected(e.to_string()),
        };
        let (public, auth) = match keys(&sub.p256dh, &sub.auth) {
            Ok(k) => k,
            Err(e) => return rejected(e.to_string()),
        };
        let vapid = match vapid_header(&uri, &keys_.vapid, &self.subject) {
            Ok(v) => v,
            Err(e) => return rejected(format!("signing the VAPID token: {e}")),
        };
        let request = WebPushBuilder::new(uri, public, auth).build(msg.payload.clone());
        let request = match request {
            Ok(r) => r,
            Err(e) => return rejected(format!("encrypting the payload: {e}")),
        };
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        headers.insert(http::header::AUTHORIZATION, vapid);
        // The builder's TTL is the JWT's validity; the message has its own.
        headers.insert("ttl", msg.ttl.into());
        headers.remove(http::header::CONTENT_LENGTH);
        if let Ok(v) = http::HeaderValue::from_str(&msg.urgency) {
            headers.insert("urgency", v);
        }
        if let Some(Ok(v)) = msg.topic.as_deref().map(http::HeaderValue::from_str) {
            headers.insert("topic", v);
        }
        let sent = self
            .client
            .post(&sub.endpoint)
            .headers(headers)
            .body(body)
            .timeout(self.timeout)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let mut source = e.source();
                while let Some(s) = source {
                    if let Some(d) = s.downcast_ref::<Denied>() {
                        return rejected(d.to_string());
                    }
                    source = s.source();
                }
                return Attempt::Retry { status: None, retry_after: None, error: chain(&e) };
            }
        };
        let status = response.status().as_u16();
        let wait = retry_after(response.headers(), std::time::SystemTime::now());
        match status {
            200..=299 => Attempt::Delivered { status },
            404 | 410 => Attempt::Gone { status },
            429 | 500..=599 => Attempt::Retry {
                status: Some(status),
                retry_after: wait,
                error: format!("the push service answered {status}"),
            },
            _ => {
                // A little of the body says why (push services explain 400/403/413 there).
                let text = response.text().await.unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                Attempt::Rejected {
                    status: Some(status),
                    error: format!("the push service answered {status}: {text}"),
                }
            }
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    use super::{
        ECDSAP256PublicKeyLike, ES256KeyPair, URL_SAFE_NO_PAD, origin, retry_after, vapid_header,
    };
    use base64::Engine as _;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        // 1994-11-06 08:49:37 UTC, RFC 9110's example date.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after(&with("120"), now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&with(" 0 "), now), Some(Duration::ZERO));
        // The three date forms RFC 9110 has recipients accept, 90 s after `now`.
        for date in [
            "Sun, 06 Nov 1994 08:51:07 GMT",
            "Sunday, 06-Nov-94 08:51:07 GMT",
            "Sun Nov  6 08:51:07 1994",
        ] {
            assert_eq!(retry_after(&with(date), now), Some(Duration::from_secs(90)), "{date}");
        }
        // A date already past: retry now (the backoff still applies as the floor).
        assert_eq!(retry_after(&with("Sun, 06 Nov 1994 08:00:00 GMT"), now), Some(Duration::ZERO));
        // Bounded, and garbage or a negative number is absent.
        assert_eq!(retry_after(&with("999999999"), now), Some(Duration::from_secs(24 * 3600)));
        assert_eq!(
            retry_after(&with("Fri, 31 Dec 9999 23:59:59 GMT"), now),
            Some(Duration::from_secs(24 * 3600))
        );
        for bad in ["-5", "soon", "1.5", "Sun, 06 Nov 1994"] {
            assert_eq!(retry_after(&with(bad), now), None, "{bad}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn the_vapid_audience_is_the_endpoints_origin_with_its_port() {
        let o = |u: &str| origin(&u.parse().unwrap()).unwrap();
        assert_eq!(o("https://push.example/wpush/v2/abc"), "https://push.example");
        assert_eq!(o("https://push.example:443/x"), "https://push.example");
        assert_eq!(o("http://127.0.0.1:8082/push/1"), "http://127.0.0.1:8082");
        assert_eq!(o("https://push.example:8443/x"), "https://push.example:8443");
        assert_eq!(o("http://push.example:80/x"), "http://push.example");

        // The header verifies with the key it names, and carries that audience.
        let key = ES256KeyPair::generate();
        let endpoint: http::Uri = "http://127.0.0.1:8082/push/1".parse().unwrap();
        let header = vapid_header(&endpoint, &key, "mailto:ops@example.com").unwrap();
        let header = header.to_str().unwrap();
        let (t, k) = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split_once(", k="))
            .expect("vapid t=<jwt>, k=<key>");
        let public = web_push_native::jwt_simple::algorithms::ES256PublicKey::from_bytes(
            &URL_SAFE_NO_PAD.decode(k).unwrap(),
        )
        .unwrap();
        let claims = public
            .verify_token::<web_push_native::jwt_simple::claims::NoCustomClaims>(t, None)
            .unwrap();
        let audiences = claims.audiences.unwrap().into_set();
        assert!(audiences.contains("http://127.0.0.1:8082"), "{audiences:?}");
        assert_eq!(claims.subject.as_deref(), Some("mailto:ops@example.com"));
    }
}
