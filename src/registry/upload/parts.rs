//! Which parts of a file pushed as several ranges are durable, and which request may record
//! a part: the set arithmetic on [`UploadState`], kept free of I/O.

use serde::{Deserialize, Serialize};

use super::UploadState;

/// Claims kept per file: far more than a client has ranges in flight. Past it the oldest
/// claim goes, and its request can no longer record parts (it is told to resume).
const MAX_CLAIMS: usize = 64;

/// A request writing parts `first..=last` of a file. A newer claim covering a part takes
/// it over from the older ones: a request still landing parts of a client that died or
/// reconnected can no longer record them once the client's next request covers them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The request's id.
    pub writer: String,
    /// Its first part number.
    pub first: u32,
    /// Its last part number.
    pub last: u32,
}

/// Where a part stands for the request that wants to record it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PartPlace {
    /// Not durable, and the request may record it.
    Open,
    /// Durable already: its bytes are not written again, whatever the body holds.
    Durable,
    /// A newer request covers it, or this request's claim is gone.
    TakenOver,
}

/// The part holding byte `offset` (1-based) with parts of `part_size` bytes.
pub(crate) fn part_at(offset: u64, part_size: u64) -> u32 {
    (offset / part_size.max(1)) as u32 + 1
}

/// Parts of a file of `size` bytes.
pub(crate) fn part_count(size: u64, part_size: u64) -> u32 {
    size.div_ceil(part_size.max(1)) as u32
}

impl UploadState {
    /// True when part `number` is durable.
    pub(crate) fn holds(&self, number: u32) -> bool {
        number <= self.recorded() || self.ahead.iter().any(|[a, b]| (*a..=*b).contains(&number))
    }

    /// Whether `writer` may record part `number`.
    pub(crate) fn place(&self, writer: &str, number: u32) -> PartPlace {
        if self.holds(number) {
            return PartPlace::Durable;
        }
        let Some(mine) = self.claims.iter().position(|c| c.writer == writer) else {
            return PartPlace::TakenOver;
        };
        let newer = &self.claims[mine + 1..];
        match newer.iter().any(|c| (c.first..=c.last).contains(&number)) {
            true => PartPlace::TakenOver,
            false => PartPlace::Open,
        }
    }

    /// Adds `claim` as the newest, dropping the claims whose parts are all durable.
    pub(crate) fn add_claim(&mut self, claim: Claim) {
        self.claims.push(claim);
        self.prune_claims();
        if self.claims.len() > MAX_CLAIMS {
            self.claims.drain(..self.claims.len() - MAX_CLAIMS);
        }
    }

    fn prune_claims(&mut self) {
        let done: Vec<bool> = self
            .claims
            .iter()
            .map(|c| (c.first..=c.last).all(|n| self.holds(n)))
            .collect();
        let mut done = done.into_iter();
        self.claims.retain(|_| !done.next().unwrap_or(false));
    }

    /// Records part `number` as durable, for a file of `size` bytes in parts of
    /// `part_size`: the contiguous parts grow over the runs ahead that now touch them.
    pub(crate) fn insert_part(&mut self, number: u32, size: u64, part_size: u64) {
        if self.holds(number) {
            return;
        }
        self.count = self.recorded();
        if number == self.count + 1 {
            self.count = number;
        } else {
            let at = self.ahead.partition_point(|[_, b]| *b < number);
            self.ahead.insert(at, [number, number]);
            // Join the neighbours this part touches.
            let mut merged: Vec<[u32; 2]> = Vec::with_capacity(self.ahead.len());
            for run in self.ahead.drain(..) {
                match merged.last_mut() {
                    Some(last) if last[1] + 1 >= run[0] => last[1] = last[1].max(run[1]),
                    _ => merged.push(run),
                }
            }
            self.ahead = merged;
        }
        while let Some([a, b]) = self.ahead.first().copied() {
            if a > self.count + 1 {
                break;
            }
            self.count = self.count.max(b);
            self.ahead.remove(0);
        }
        self.received = (u64::from(self.count) * part_size).min(size);
        self.prune_claims();
    }

    /// The durable bytes as `[start, end)` ranges in order, for a file of `size` bytes.
    pub(crate) fn durable_ranges(&self, size: u64, part_size: u64) -> Vec<[u64; 2]> {
        let byte = |n: u32| (u64::from(n) * part_size).min(size);
        let prefix = (self.received > 0).then_some([0, self.received]);
        prefix
            .into_iter()
            .chain(self.ahead.iter().map(|[a, b]| [byte(a - 1), byte(*b)]))
            .filter(|[s, e]| s < e)
            .collect()
    }

    /// Every durable part number past the contiguous ones.
    pub(crate) fn ahead_parts(&self) -> impl Iterator<Item = u32> + '_ {
        self.ahead.iter().flat_map(|[a, b]| *a..=*b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART: u64 = 10;

    fn claim(writer: &str, first: u32, last: u32) -> Claim {
        Claim {
            writer: writer.into(),
            first,
            last,
        }
    }

    #[test]
    fn parts_in_any_order_join_into_the_contiguous_prefix() {
        let mut s = UploadState::default();
        for n in [3, 5, 4, 7] {
            s.insert_part(n, 75, PART);
        }
        assert_eq!((s.count, s.received), (0, 0));
        assert_eq!(s.ahead, vec![[3, 5], [7, 7]]);
        assert_eq!(s.durable_ranges(75, PART), vec![[20, 50], [60, 70]]);
        s.insert_part(1, 75, PART);
        s.insert_part(2, 75, PART);
        assert_eq!((s.count, s.received), (5, 50));
        assert_eq!(s.ahead, vec![[7, 7]]);
        s.insert_part(8, 75, PART);
        s.insert_part(6, 75, PART);
        assert_eq!((s.count, s.received, s.ahead.len()), (8, 75, 0));
        assert_eq!(s.durable_ranges(75, PART), vec![[0, 75]]);
        assert_eq!(part_count(75, PART), 8);
        assert_eq!(part_at(70, PART), 8);
    }

    #[test]
    fn a_newer_claim_takes_over_only_the_parts_it_covers() {
        let mut s = UploadState::default();
        s.add_claim(claim("old", 1, 8));
        s.add_claim(claim("stripe", 3, 3));
        s.add_claim(claim("rerun", 5, 8));
        assert_eq!(s.place("old", 2), PartPlace::Open);
        assert_eq!(s.place("old", 3), PartPlace::TakenOver);
        assert_eq!(s.place("old", 6), PartPlace::TakenOver);
        assert_eq!(s.place("stripe", 3), PartPlace::Open);
        assert_eq!(s.place("rerun", 6), PartPlace::Open);
        assert_eq!(s.place("gone", 2), PartPlace::TakenOver);
        s.insert_part(3, 80, PART);
        assert_eq!(s.place("rerun", 3), PartPlace::Durable);
        assert!(
            !s.claims.iter().any(|c| c.writer == "stripe"),
            "a claim whose parts are all durable is dropped"
        );
        for i in 0..(MAX_CLAIMS as u32 + 5) {
            s.add_claim(claim(&format!("w{i}"), 10 + i, 10 + i));
        }
        assert_eq!(s.claims.len(), MAX_CLAIMS);
    }
}
