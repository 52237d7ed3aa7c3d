//! Stage 8b of the pipeline, between the upstream call and the response filters: a metered JSON
//! answer is held to its end before its headers go out ([`crate::cost::Plan::holds`]), so its
//! usage is read once and its cost and tokens go in its headers (`x-relay-cost-usd`,
//! `x-relay-tokens`), as a cache hit's do. The body goes out byte for byte as it came. Streams are
//! never held; an answer that grows past [`crate::cost::usage::MAX_JSON`] (no length given) goes
//! out as it comes from there on, metered the usual way.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::context::RequestContext;
use crate::error::EdgeError;

/// What was read of the body before its headers went out.
#[derive(Debug, Default)]
pub struct Held {
    /// Sent first, ahead of whatever the upstream body still has.
    pub bytes: Option<Bytes>,
}

/// Holds a metered JSON answer (module docs).
pub struct HoldJson<'a> {
    pub cost: Option<&'a crate::cost::Plan>,
    pub provider: &'a str,
    /// The provider's `timeouts.idle`: the longest wait for each frame.
    pub idle: Duration,
}

impl HoldJson<'_> {
    /// Reads the answer when it is to be held; its usage goes on `x`. An upstream that fails or
    /// goes silent before the end is a 502 / 504: nothing reached the caller yet. `read`: what
    /// stage 8 already read of it (an error answer), passed on as it is.
    pub async fn run(
        &self,
        x: &mut RequestContext,
        resp: Response<Incoming>,
        read: Option<Bytes>,
    ) -> Result<(Response<Incoming>, Held), EdgeError> {
        if read.is_some() {
            return Ok((resp, Held { bytes: read }));
        }
        let Some(plan) = self.cost else {
            return Ok((resp, Held::default()));
        };
        if !plan.holds(resp.status(), resp.headers()) {
            return Ok((resp, Held::default()));
        }
        let (parts, mut body) = resp.into_parts();
        let mut buf = BytesMut::new();
        let whole = loop {
            match tokio::time::timeout(self.idle, body.frame()).await {
                Err(_) => {
                    return Err(EdgeError::Timeout {
                        provider: self.provider.to_string(),
                        timeout: self.idle,
                    })
                }
                Ok(Some(Err(e))) => {
                    return Err(EdgeError::Unreachable {
                        provider: self.provider.to_string(),
                        detail: format!("the answer was cut off: {e}"),
                    })
                }
                // Trailers: the answer is over for relay (providers send none).
                Ok(None) => break true,
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => {
                        buf.extend_from_slice(&d);
                        if buf.len() > crate::cost::usage::MAX_JSON {
                            break false;
                        }
                    }
                    Err(_) => break true,
                },
            }
        };
        let bytes = buf.freeze();
        if whole {
            x.usage = crate::cost::usage::from_json(&bytes);
        }
        let held = Held {
            bytes: (!bytes.is_empty()).then_some(bytes),
        };
        Ok((Response::from_parts(parts, body), held))
    }
}
