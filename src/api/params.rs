//! Request parsing that never panics and always answers a `FAIL` envelope.

use std::collections::HashMap;

use actix_web::web;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Largest JSON body accepted (a VM configuration is a few KiB).
const MAX_JSON: usize = 1 << 20;

/// Query parameters, percent-decoded. A `+` stays a `+`: tags such as
/// `vanilla+port-forward-22` must survive a hand-written URL.
pub fn query(req: &actix_web::HttpRequest) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| {
                    ApiError::bad_request(format!("query parameter {k:?} is not valid UTF-8"))
                })
        };
        out.insert(decode(k)?, decode(v)?);
    }
    Ok(out)
}

/// An optional numeric query or body parameter.
pub fn number(name: &str, value: Option<&str>) -> Result<Option<u32>, ApiError> {
    value
        .map(|v| {
            v.trim().parse::<u32>().map_err(|_| {
                ApiError::bad_request(format!("{name} must be a non-negative integer, got {v:?}"))
            })
        })
        .transpose()
}

/// The whole body, bounded.
pub async fn body_bytes(mut payload: web::Payload) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > MAX_JSON {
            return Err(ApiError::bad_request(format!(
                "request body is larger than {MAX_JSON} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON body; `None` when the body is empty.
pub async fn json_body<T: DeserializeOwned>(payload: web::Payload) -> Result<Option<T>, ApiError> {
    let body = body_bytes(payload).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// A JSON body that must be present.
pub async fn required_json<T: DeserializeOwned>(payload: web::Payload) -> Result<T, ApiError> {
    json_body(payload)
        .await?
        .ok_or_else(|| ApiError::bad_request("a JSON body is required"))
}

/// Parses `Range: bytes=a-b` (also `a-` and `-n`) against a file size: `Ok(None)` means
/// the whole file (no header, or one we do not understand, which RFC 9110 lets us
/// ignore); an unsatisfiable range is an error.
pub fn byte_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ok(None),
        (true, false) => {
            let Ok(n) = b.parse::<u64>() else {
                return Ok(None);
            };
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size)
        }
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return Ok(None);
            };
            let end = match b.is_empty() {
                true => size,
                false => match b.parse::<u64>() {
                    Ok(last) if last >= start => last.saturating_add(1).min(size),
                    Ok(_) => return Ok(None),
                    Err(_) => return Ok(None),
                },
            };
            (start, end)
        }
    };
    if range.0 >= size {
        return Err(());
    }
    Ok(Some(range))
}

/// A 200 for the whole of a `size`-byte object, or a 206 naming `range` in
/// `Content-Range`; both say ranges are accepted.
pub fn ranged_reply(range: Option<(u64, u64)>, size: u64) -> actix_web::HttpResponseBuilder {
    let mut reply = match range {
        Some((start, end)) => {
            let mut r = actix_web::HttpResponse::PartialContent();
            r.insert_header((
                actix_web::http::header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            ));
            r
        }
        None => actix_web::HttpResponse::Ok(),
    };
    reply.insert_header((actix_web::http::header::ACCEPT_RANGES, "bytes"));
    reply
}

/// The reply to a `HEAD`: the server sends no body but keeps a sized body's
/// `Content-Length`.
pub fn headers_only(
    mut reply: actix_web::HttpResponseBuilder,
    len: u64,
) -> actix_web::HttpResponse {
    let nothing = futures_util::stream::empty::<Result<bytes::Bytes, crate::store::StoreError>>();
    reply.body(actix_web::body::SizedStream::new(len, Box::pin(nothing)))
}

/// A download's body of `len` bytes from `stream`, counted as pulled bytes and as a pull
/// in flight until the body ends, whichever API serves it.
pub fn counted_pull(
    reply: &mut actix_web::HttpResponseBuilder,
    len: u64,
    stream: crate::store::ByteStream,
) -> actix_web::HttpResponse {
    use crate::telemetry::metrics::{self, Direction};
    use futures_util::TryStreamExt;
    let in_flight = super::in_flight::TRANSFERS.started(Direction::Pull);
    let counted = stream.inspect_ok(move |b| {
        let _until_the_body_ends = &in_flight;
        metrics::transferred(Direction::Pull, b.len() as u64);
    });
    reply.body(actix_web::body::SizedStream::new(len, Box::pin(counted)))
}

/// An upload's request body, counted as pushed bytes and as a push in flight for as long
/// as the body is held, whichever API receives it.
pub fn counted_push(
    payload: web::Payload,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, actix_web::error::PayloadError>> + Unpin
{
    use crate::telemetry::metrics::{self, Direction};
    use futures_util::TryStreamExt;
    let in_flight = super::in_flight::TRANSFERS.started(Direction::Push);
    payload.inspect_ok(move |b| {
        let _until_the_body_is_dropped = &in_flight;
        metrics::transferred(Direction::Push, b.len() as u64);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        assert_eq!(byte_range(None, 10), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-4"), 10), Ok(Some((0, 5))));
        assert_eq!(byte_range(Some("bytes=5-"), 10), Ok(Some((5, 10))));
        assert_eq!(byte_range(Some("bytes=-3"), 10), Ok(Some((7, 10))));
        assert_eq!(byte_range(Some("bytes=8-100"), 10), Ok(Some((8, 10))));
        assert_eq!(byte_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(byte_range(Some("bytes=-0"), 10), Err(()));
        assert_eq!(byte_range(Some("bytes=0-0"), 0), Err(()));
        assert_eq!(byte_range(Some("items=0-1"), 10), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-1,3-4"), 10), Ok(None));
        assert_eq!(byte_range(Some("bytes=x-1"), 10), Ok(None));
    }

    #[test]
    fn keeps_plus_signs_in_queries() {
        let req = actix_web::test::TestRequest::with_uri("/x?id=a&tag=vanilla+port%2Bx%20y")
            .to_http_request();
        let q = query(&req).unwrap();
        assert_eq!(q["tag"], "vanilla+port+x y");
        assert_eq!(q["id"], "a");
        let bad = actix_web::test::TestRequest::with_uri("/x?tag=%FF").to_http_request();
        assert!(query(&bad).is_err());
    }
}
