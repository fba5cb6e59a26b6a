//! Bearer tokens: `/v1/*` and `/debug/*` take any of the accepted tokens,
//! `/metrics` its own (or none); the probes and the OpenAPI document are
//! open. Tokens are compared as SHA-256 digests in constant time, so
//! neither a token's content nor its length shows in the time taken.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::App;

/// Whether `presented` is one of `accepted`, in constant time.
fn token_ok(presented: &[u8], accepted: &[String]) -> bool {
    use sha2::{Digest, Sha256};
    let p = Sha256::digest(presented);
    let mut ok = subtle::Choice::from(0);
    for t in accepted {
        ok |= p.as_slice().ct_eq(Sha256::digest(t.as_bytes()).as_slice());
    }
    ok.into()
}

/// The bearer token of a request: `None` without one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = v.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| v[7..].trim_ascii())
}

fn check(headers: &HeaderMap, accepted: &[String]) -> Result<(), ApiError> {
    match bearer(headers) {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an Authorization: Bearer token is required",
        )),
        Some(t) if token_ok(t, accepted) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token is not accepted",
        )),
    }
}

/// The API's tokens (none set: open).
pub(super) async fn require_token(State(app): State<App>, req: Request, next: Next) -> Response {
    let tokens = &app.config().tokens;
    if !tokens.is_empty() {
        if let Err(e) = check(req.headers(), tokens) {
            let mut r = e.into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// `/metrics`'s token, if it has one.
pub(super) async fn require_metrics_token(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(t) = &app.config().metrics_token {
        if let Err(e) = check(req.headers(), std::slice::from_ref(t)) {
            return e.into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_schemes() {
        let accepted = vec!["one".to_owned(), "two".to_owned()];
        assert!(token_ok(b"two", &accepted));
        assert!(!token_ok(b"tw", &accepted));
        assert!(!token_ok(b"", &[]));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bEaReR   one "));
        assert_eq!(bearer(&h), Some(&b"one"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic one"));
        assert_eq!(bearer(&h), None);
    }
}
