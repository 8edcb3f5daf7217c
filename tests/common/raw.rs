//! HTTP/1.1 over a plain TCP socket, with the request target sent byte for byte: HTTP
//! clients normalise what an attacker would not (dot segments, escapes), so the tests that
//! send non-canonical spellings of a path write the request line themselves.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A reply: status, headers (names lower-case) and the body, de-chunked.
#[derive(Debug, Clone)]
pub struct RawReply {
    /// HTTP status.
    pub status: u16,
    /// Every header, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawReply {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method target` to the server at `base` (`http://host:port`) with these headers
/// and body, on a connection of its own, and reads the whole reply.
pub async fn send_raw(
    base: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawReply {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .unwrap_or_else(|e| panic!("connect to {host}: {e}"));
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    // Read only the reply, not to the end of the connection: a server that closes after
    // a refusal may wait for the client's side first.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(reply) = parse(&raw, method == "HEAD") {
            return reply;
        }
        let n = stream.read(&mut buf).await.expect("read reply");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    parse_at_end(&raw, method == "HEAD").unwrap_or_else(|| {
        panic!(
            "{method} {target}: no HTTP reply in {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// The reply in `raw` once it is complete by its own framing (a length, chunks, or none).
fn parse(raw: &[u8], head_only: bool) -> Option<RawReply> {
    let (status, headers, rest) = head(raw)?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if head_only || status == 204 || status == 304 {
        Vec::new()
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else {
        let len: usize = header("content-length")?.parse().ok()?;
        rest.get(..len)?.to_vec()
    };
    Some(RawReply {
        status,
        headers,
        body,
    })
}

/// The reply in `raw` once the server has closed the connection: the body is the rest.
fn parse_at_end(raw: &[u8], head_only: bool) -> Option<RawReply> {
    let (status, headers, rest) = head(raw)?;
    Some(RawReply {
        status,
        headers,
        body: if head_only { Vec::new() } else { rest.to_vec() },
    })
}

type Head<'a> = (u16, Vec<(String, String)>, &'a [u8]);

/// The status line and headers, and the bytes after them.
fn head(raw: &[u8]) -> Option<Head<'_>> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, &raw[end + 4..]))
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
