//! Answers of relay's own loopback API (`/relay/...`: the cache admin API, `/relay/usage`): JSON
//! bodies, errors as `{"error": "..."}`, never stored by a cache on the way.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// `value` as JSON.
pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<Bytes> {
    // Plain structs of strings, numbers and JSON values: serializing cannot fail.
    let body = serde_json::to_vec(value).expect("API answers always serialize");
    response(status, "application/json", Bytes::from(body))
}

/// `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Bytes> {
    json(status, &serde_json::json!({ "error": message }))
}

/// `body` as it is, of `content_type`.
pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Bytes> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
