//! The W3C trace context every request of one `vmreg registry` run carries, so that the
//! registry's spans of a push or pull join one trace: the caller's, given in the
//! `TRACEPARENT` (and `TRACESTATE`) environment variables as OpenTelemetry's convention
//! for command-line tools has it, or else one begun by this run.

use reqwest::header::{HeaderMap, HeaderValue};

/// The headers for this run's requests, from the environment.
pub fn headers() -> HeaderMap {
    let given = std::env::var("TRACEPARENT").ok();
    let state = std::env::var("TRACESTATE").ok();
    headers_for(given.as_deref(), state.as_deref())
}

/// The headers for `given` (a `traceparent` value) and `state`: the caller's trace when
/// `given` is valid, else a new sampled one; `state` travels only with the caller's trace.
pub fn headers_for(given: Option<&str>, state: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let continued = given.map(str::trim).filter(|v| valid(v));
    let parent = match continued {
        Some(v) => v.to_ascii_lowercase(),
        None => begin(),
    };
    if let Ok(value) = HeaderValue::from_str(&parent) {
        headers.insert("traceparent", value);
    }
    let state = state.filter(|s| continued.is_some() && !s.trim().is_empty());
    if let Some(value) = state.and_then(|s| HeaderValue::from_str(s.trim()).ok()) {
        headers.insert("tracestate", value);
    }
    headers
}

/// `version-traceid-parentid-flags` with non-zero ids, as W3C Trace Context level 1 reads
/// it: a later version may append fields after the flags.
fn valid(value: &str) -> bool {
    let fields: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    match fields.as_slice() {
        [version, trace, parent, flags, rest @ ..] => {
            hex(version, 2)
                && !version.eq_ignore_ascii_case("ff")
                && (rest.is_empty() || *version != "00")
                && hex(trace, 32)
                && nonzero(trace)
                && hex(parent, 16)
                && nonzero(parent)
                && hex(flags, 2)
        }
        _ => false,
    }
}

/// A new trace, sampled: a run that nobody asked to trace still shows as one trace
/// wherever the registry exports its spans.
fn begin() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let parent = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{parent}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn continues_a_valid_traceparent_with_its_state() {
        let h = headers_for(Some(GIVEN), Some("vendor=x"));
        assert_eq!(h["traceparent"], GIVEN);
        assert_eq!(h["tracestate"], "vendor=x");
    }

    #[test]
    fn begins_a_trace_when_none_or_a_broken_one_is_given() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let short = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902-01";
        for given in [None, Some("garbage"), Some(zero_trace), Some(short)] {
            let h = headers_for(given, Some("vendor=x"));
            let made = h["traceparent"].to_str().unwrap();
            assert!(valid(made), "{made}");
            assert_ne!(made, GIVEN);
            assert!(made.ends_with("-01"));
            assert!(h.get("tracestate").is_none());
        }
        let a = headers_for(None, None);
        let b = headers_for(None, None);
        assert_ne!(a["traceparent"], b["traceparent"]);
    }
}
