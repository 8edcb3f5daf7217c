//! An optional cap on the bytes per second a transfer moves, shared by all its streams.
//! Operators use it to spare a link; tests use it to interrupt a transfer half-way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A shared pacing clock: each taker books the time its bytes take at the given rate.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    next: Mutex<Instant>,
}

impl Throttle {
    /// A throttle at `bytes_per_sec` (which must be positive).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more bytes fit under the rate.
    pub async fn take(&self, bytes: u64) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let wait_until = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + cost;
            *next
        };
        tokio::time::sleep_until(wait_until.into()).await;
    }
}

/// Parses a rate such as `5M`, `512K`, `10MiB` or a plain byte count.
pub fn parse_rate(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&r| r > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("100"), Some(100));
        assert_eq!(parse_rate("5M"), Some(5 << 20));
        assert_eq!(parse_rate("2KiB"), Some(2048));
        assert_eq!(parse_rate("0"), None);
        assert_eq!(parse_rate("fast"), None);
    }

    #[tokio::test]
    async fn paces_bytes() {
        let t = Throttle::new(1_000_000);
        let start = Instant::now();
        t.take(100_000).await;
        t.take(100_000).await;
        assert!(start.elapsed() >= Duration::from_millis(190));
    }
}
