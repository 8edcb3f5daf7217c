//! The template listings (`GET /registry/vm`, `/registry/v2/vm`): each template is rendered
//! to its row as it is read, the rows are sorted by name and sent as a stream, so a listing
//! of 100,000 templates holds its rows' bytes, never a JSON tree of the whole reply. The
//! vendor's clients expect every template in one reply; `?limit=&offset=` pages are ours.

use std::collections::HashMap;

use actix_web::HttpResponse;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde_json::Value;

use super::params::number;
use super::ApiError;
use crate::registry::templates::ListedTemplate;
use crate::registry::Registry;

/// Header carrying how many templates the whole listing holds, paged or not.
pub const TOTAL_HEADER: &str = "X-Total-Count";

/// Bytes of rows sent in one chunk of the reply.
const CHUNK: usize = 256 << 10;

/// A window of the name-sorted listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    offset: usize,
    limit: usize,
}

/// The page a query asks for: none without `limit` and `offset`; `limit` is 1 to `max`.
pub fn page(q: &HashMap<String, String>, max: usize) -> Result<Option<Page>, ApiError> {
    let limit = number("limit", q.get("limit").map(String::as_str))?;
    let offset = number("offset", q.get("offset").map(String::as_str))?;
    if limit.is_none() && offset.is_none() {
        return Ok(None);
    }
    let limit = limit.map_or(max, |l| l as usize);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {max} templates (--max-page)"
        )));
    }
    Ok(Some(Page {
        offset: offset.unwrap_or(0) as usize,
        limit,
    }))
}

/// The listing's `OK` envelope, each template shaped by `row`, sorted by name.
pub async fn reply(
    registry: &Registry,
    page: Option<Page>,
    row: impl Fn(&ListedTemplate) -> Value,
) -> Result<HttpResponse, ApiError> {
    let mut rows: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |t: ListedTemplate| {
        let rendered = crate::meta::encode(&row(&t));
        rows.push((t.summary.name, rendered));
    };
    registry.scan(&mut add).await?;
    // OCI repositories are listed as templates too (see registry::oci::bridge).
    registry.oci_scan(&mut add).await?;
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let total = rows.len();
    if let Some(p) = page {
        rows.truncate(p.offset.saturating_add(p.limit).min(total));
        rows.drain(..p.offset.min(rows.len()));
    }
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((TOTAL_HEADER, total.to_string()))
        .streaming(envelope(rows.into_iter().map(|(_, r)| r))))
}

/// `{"body":[rows…],"message":"","status":"OK"}` (the key order `ok` gives), in chunks.
fn envelope(
    rows: impl Iterator<Item = Vec<u8>> + 'static,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let mut rows = rows.peekable();
    let mut first = true;
    let chunks = std::iter::from_fn(move || {
        rows.peek()?;
        let mut chunk = Vec::with_capacity(CHUNK + 1024);
        while chunk.len() < CHUNK {
            let Some(row) = rows.next() else { break };
            if !std::mem::take(&mut first) {
                chunk.push(b',');
            }
            chunk.extend_from_slice(&row);
        }
        Some(Bytes::from(chunk))
    });
    stream::once(async { Bytes::from_static(br#"{"body":["#) })
        .chain(stream::iter(chunks))
        .chain(stream::once(async {
            Bytes::from_static(br#"],"message":"","status":"OK"}"#)
        }))
        .map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_envelope_joins_rows_into_one_json_document() {
        let pad = "x".repeat(200);
        let rows = (0..3000).map(move |i| format!("{{\"n\":{i},\"pad\":\"{pad}\"}}").into_bytes());
        let parts: Vec<Bytes> = envelope(rows).map(Result::unwrap).collect().await;
        assert!(
            parts.len() >= 5,
            "600 KB of rows go in chunks: {}",
            parts.len()
        );
        let whole: Vec<u8> = parts.concat();
        let v: Value = serde_json::from_slice(&whole).unwrap();
        assert_eq!(v["status"], "OK");
        assert_eq!(v["body"].as_array().unwrap().len(), 3000);
        assert_eq!(v["body"][2999]["n"], 2999);
        let empty: Vec<Bytes> = envelope(std::iter::empty())
            .map(Result::unwrap)
            .collect()
            .await;
        let v: Value = serde_json::from_slice(&empty.concat()).unwrap();
        assert_eq!(v["body"], serde_json::json!([]));
    }

    #[test]
    fn pages_are_bounded() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(page(&q(&[]), 10).unwrap(), None);
        assert_eq!(
            page(&q(&[("offset", "5")]), 10).unwrap(),
            Some(Page {
                offset: 5,
                limit: 10
            })
        );
        assert!(page(&q(&[("limit", "11")]), 10).is_err());
        assert!(page(&q(&[("limit", "0")]), 10).is_err());
        assert!(page(&q(&[("limit", "-1")]), 10).is_err());
    }
}
