//! One byte range of an object read as chunk-aligned pieces, several fetched at once and
//! yielded in order.
//!
//! A single GET stream from S3 is bounded by how fast the backend serves one request; a
//! download split into pieces fetched `in_flight` at a time runs as fast as the backend
//! serves several. Memory stays bounded: at most `in_flight` pieces are being fetched or
//! waiting, plus the one being sent, each at most one chunk.

use std::future::Future;

use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};

use super::{ByteStream, StoreError, StoreResult};

/// A piece of a requested range that lies inside one aligned chunk of the object:
/// `index * chunk <= start < end <= (index + 1) * chunk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Which chunk of the object (`offset / chunk`).
    pub index: u64,
    /// First byte of the piece (absolute offset in the object).
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
}

/// The pieces of `start..end` for chunks of `chunk` bytes, in order.
pub fn pieces(start: u64, end: u64, chunk: u64) -> impl Iterator<Item = Piece> {
    let chunk = chunk.max(1);
    let first = start / chunk;
    let last = if end > start {
        (end - 1) / chunk + 1
    } else {
        first
    };
    (first..last).map(move |index| Piece {
        index,
        start: start.max(index * chunk),
        end: end.min((index + 1).saturating_mul(chunk)),
    })
}

/// The bytes `from..to` of a chunk held as the buffers it arrived in, without copying.
pub fn slice(parts: &[Bytes], from: u64, to: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for part in parts {
        let len = part.len() as u64;
        let (lo, hi) = (from.max(at), to.min(at + len));
        if lo < hi {
            out.push(part.slice((lo - at) as usize..(hi - at) as usize));
        }
        at += len;
        if at >= to {
            break;
        }
    }
    out
}

/// The bytes of a fetched piece, in the buffers they arrived in, and what must be held
/// until they have all been sent (a reservation of read memory, a shared chunk).
pub struct Fetched<G> {
    /// The piece's bytes.
    pub parts: Vec<Bytes>,
    /// Dropped once the stream has yielded the piece's last buffer.
    pub hold: G,
}

/// Streams `start..end`: each piece is first admitted by `admit`, one after the other in
/// order (so a reader waiting for admission always holds its oldest pieces already), then
/// fetched by `fetch` with what its admission gave; up to `in_flight` pieces are admitted
/// or fetched at once and the bytes come out in order. A piece that comes back shorter or
/// longer than asked ends the stream with an error, as does a failed fetch.
pub fn ordered<A, AFut, T, F, Fut, G>(
    start: u64,
    end: u64,
    chunk: u64,
    in_flight: usize,
    admit: A,
    fetch: F,
) -> ByteStream
where
    A: FnMut(Piece) -> AFut + Send + 'static,
    AFut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    F: FnMut(Piece, T) -> Fut + Send + 'static,
    Fut: Future<Output = StoreResult<Fetched<G>>> + Send + 'static,
    G: Send + 'static,
{
    let (mut admit, mut fetch) = (admit, fetch);
    stream::iter(pieces(start, end, chunk))
        .then(move |piece| {
            let admitted = admit(piece);
            async move { (piece, admitted.await) }
        })
        .map(move |(piece, ticket)| {
            let fetched = fetch(piece, ticket);
            async move {
                let Fetched { parts, hold } = fetched.await?;
                let got: u64 = parts.iter().map(|b| b.len() as u64).sum();
                if got != piece.end - piece.start {
                    return Err(StoreError::Unavailable(format!(
                        "read bytes {}..{}: got {got} bytes",
                        piece.start, piece.end
                    )));
                }
                // The hold lives in the stream's state, dropped when its last buffer is out.
                Ok(stream::unfold(
                    (parts.into_iter(), hold),
                    |(mut parts, hold)| async move { parts.next().map(|b| (Ok(b), (parts, hold))) },
                ))
            }
        })
        .buffered(in_flight.max(1))
        .try_flatten()
        // Nothing after an error: the pieces behind it would leave a hole.
        .scan(false, |failed, item| {
            let next = (!*failed).then_some(item);
            if matches!(next, Some(Err(_))) {
                *failed = true;
            }
            futures_util::future::ready(next)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn byte(at: u64) -> u8 {
        (at % 251) as u8
    }

    /// Fetches started, fetches running now, and the most ever running at once.
    #[derive(Default)]
    struct Counts {
        started: AtomicU64,
        running: AtomicU64,
        peak: AtomicU64,
    }

    type Fetch = futures_util::future::BoxFuture<'static, StoreResult<Fetched<()>>>;

    /// Admission without a budget.
    fn free(_: Piece) -> futures_util::future::Ready<()> {
        futures_util::future::ready(())
    }

    /// The pieces' bytes, holding nothing.
    fn unheld(parts: Vec<Bytes>) -> StoreResult<Fetched<()>> {
        Ok(Fetched { parts, hold: () })
    }

    /// A fetch of the object whose pieces arrive in several buffers, later pieces first.
    fn fake(counts: Arc<Counts>) -> impl FnMut(Piece, ()) -> Fetch {
        move |p: Piece, ()| {
            counts.started.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            Box::pin(async move {
                let now = counts.running.fetch_add(1, Ordering::SeqCst) + 1;
                counts.peak.fetch_max(now, Ordering::SeqCst);
                // Later pieces finish first, so order must come from the reader.
                tokio::time::sleep(Duration::from_millis(20 - (p.index % 4) * 5)).await;
                counts.running.fetch_sub(1, Ordering::SeqCst);
                let bytes: Vec<u8> = (p.start..p.end).map(byte).collect();
                let mid = bytes.len() / 3;
                unheld(vec![
                    Bytes::copy_from_slice(&bytes[..mid]),
                    Bytes::copy_from_slice(&bytes[mid..]),
                ])
            })
        }
    }

    async fn collect(mut s: ByteStream) -> StoreResult<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    #[test]
    fn pieces_cover_the_range_exactly_within_aligned_chunks() {
        let p: Vec<_> = pieces(5, 25, 10).collect();
        assert_eq!(
            p,
            [
                Piece {
                    index: 0,
                    start: 5,
                    end: 10
                },
                Piece {
                    index: 1,
                    start: 10,
                    end: 20
                },
                Piece {
                    index: 2,
                    start: 20,
                    end: 25
                },
            ]
        );
        assert_eq!(pieces(10, 20, 10).count(), 1);
        assert_eq!(pieces(7, 7, 10).count(), 0);
        assert_eq!(
            pieces(3, 4, 10).collect::<Vec<_>>(),
            [Piece {
                index: 0,
                start: 3,
                end: 4
            }]
        );
    }

    #[test]
    fn slices_across_buffers_without_losing_a_byte() {
        let parts = [
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"defg"),
            Bytes::from_static(b"h"),
        ];
        let join = |v: Vec<Bytes>| v.concat();
        assert_eq!(join(slice(&parts, 0, 8)), b"abcdefgh");
        assert_eq!(join(slice(&parts, 2, 5)), b"cde");
        assert_eq!(join(slice(&parts, 3, 7)), b"defg");
        assert_eq!(join(slice(&parts, 7, 8)), b"h");
        assert!(slice(&parts, 4, 4).is_empty());
    }

    #[tokio::test]
    async fn yields_exactly_the_range_in_order() {
        for (start, end) in [(0, 1000), (3, 997), (100, 200), (999, 1000), (0, 64)] {
            let got = collect(ordered(start, end, 64, 4, free, fake(Arc::default())))
                .await
                .unwrap();
            let want: Vec<u8> = (start..end).map(byte).collect();
            assert_eq!(got, want, "{start}..{end}");
        }
    }

    #[tokio::test]
    async fn a_failed_piece_ends_the_stream_with_its_error_after_the_bytes_before_it() {
        let mut inner = fake(Arc::default());
        let s = ordered(0, 640, 64, 3, free, move |p: Piece, ()| {
            let ok = inner(p, ());
            async move {
                if p.index == 4 {
                    Err(StoreError::Unavailable("connection reset".into()))
                } else {
                    ok.await
                }
            }
        });
        let mut s = s;
        let mut before = 0;
        let err = loop {
            match s.next().await {
                Some(Ok(b)) => before += b.len(),
                Some(Err(e)) => break e,
                None => panic!("the stream ended without the error"),
            }
        };
        assert_eq!(
            before,
            4 * 64,
            "every byte before the failed piece, none after"
        );
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert!(s.next().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn a_short_piece_is_an_error_not_a_shorter_file() {
        let s = ordered(0, 200, 64, 2, free, |p: Piece, ()| async move {
            let n = if p.index == 1 { 10 } else { p.end - p.start };
            unheld(vec![Bytes::from(vec![0u8; n as usize])])
        });
        let err = collect(s).await.unwrap_err();
        assert!(err.to_string().contains("got 10 bytes"), "{err}");
    }

    #[tokio::test]
    async fn fetches_run_in_parallel_but_at_most_in_flight_ahead_of_the_reader() {
        let counts = Arc::new(Counts::default());
        let in_flight = 3;
        let mut s = ordered(0, 64 * 40, 64, in_flight, free, fake(counts.clone()));
        let mut consumed = 0u64;
        while let Some(b) = s.next().await {
            consumed += b.unwrap().len() as u64;
            // A slow reader: the fetches may not run away from it.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let fully_read = consumed / 64;
            let ahead = counts.started.load(Ordering::SeqCst) - fully_read;
            assert!(
                ahead <= in_flight as u64 + 1,
                "{ahead} pieces held after reading {consumed} bytes"
            );
        }
        assert_eq!(consumed, 64 * 40);
        assert_eq!(counts.started.load(Ordering::SeqCst), 40);
        assert_eq!(
            counts.peak.load(Ordering::SeqCst),
            in_flight as u64,
            "pieces were not fetched in parallel"
        );
    }

    #[tokio::test]
    async fn pieces_are_admitted_in_order_and_held_until_their_bytes_are_sent() {
        use crate::store::memory::ReadMemory;
        // A budget of two pieces for a reader that would fetch four ahead: it gets two,
        // admitted in order, and each piece's reservation goes back once it is sent.
        let memory = ReadMemory::new(128);
        let admitted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = {
            let (memory, admitted) = (memory.clone(), admitted.clone());
            ordered(
                0,
                64 * 10,
                64,
                4,
                move |p: Piece| {
                    let (memory, admitted) = (memory.clone(), admitted.clone());
                    async move {
                        let reserved = memory.reserve(p.end - p.start, || {}).await;
                        admitted.lock().unwrap().push(p.index);
                        reserved
                    }
                },
                |p: Piece, reserved| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let bytes: Vec<u8> = (p.start..p.end).map(byte).collect();
                    Ok(Fetched {
                        parts: vec![Bytes::from(bytes)],
                        hold: reserved,
                    })
                },
            )
        };
        let got = tokio::time::timeout(Duration::from_secs(10), collect(s))
            .await
            .expect("a reader alone is never stuck on its own budget")
            .unwrap();
        assert_eq!(got, (0..64 * 10).map(byte).collect::<Vec<u8>>());
        assert_eq!(*admitted.lock().unwrap(), (0..10).collect::<Vec<u64>>());
        assert_eq!(memory.peak(), 128, "never more than the budget");
        // Every reservation went back: the whole budget is free again.
        let all = tokio::time::timeout(Duration::from_secs(5), memory.reserve(128, || {}))
            .await
            .expect("nothing is still held");
        drop(all);
    }
}
