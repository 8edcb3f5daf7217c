//! Sends one file's parts to the blob store, several in flight, and records each part in
//! the upload state as it becomes durable, in order, so that the recorded state is always
//! a contiguous prefix a client can resume from.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::push::UploadState;
use super::{Registry, RegistryError, RegistryResult};
use crate::digest::ResumableSha256;
use crate::store::{PartInfo, StoreError, StoreResult, UploadHandle};

/// Bytes of parts one upload may have in flight; with parts larger than this (files over
/// about 80 GB) one part is in flight at a time.
const IN_FLIGHT_BUDGET: u64 = 64 << 20;
/// Part buffers kept for reuse across uploads.
const POOLED_BUFFERS: usize = 16;

/// Part buffers handed back once the store is done with them. Reusing them keeps the
/// allocator from piling up freed multi-MiB blocks, which it would not return to the OS.
#[derive(Default)]
pub(crate) struct BufferPool(std::sync::Mutex<Vec<BytesMut>>);

impl BufferPool {
    /// An empty buffer of at least `size` bytes of capacity.
    fn take(&self, size: usize) -> BytesMut {
        let reused = self.0.lock().ok().and_then(|mut pool| {
            let at = pool
                .iter()
                .position(|b| b.capacity() >= size && b.capacity() <= 2 * size)?;
            Some(pool.swap_remove(at))
        });
        reused.unwrap_or_else(|| BytesMut::with_capacity(size))
    }

    /// Keeps a part's buffer when nothing else holds it any more.
    fn give_back(&self, part: Bytes) {
        if let Ok(mut buffer) = part.try_into_mut() {
            buffer.clear();
            if let Ok(mut pool) = self.0.lock() {
                if pool.len() < POOLED_BUFFERS {
                    pool.push(buffer);
                }
            }
        }
    }
}

struct InFlight {
    task: tokio::task::JoinHandle<StoreResult<PartInfo>>,
    /// The hash state after this part, recorded when the part lands.
    hasher: ResumableSha256,
    /// The part's bytes, to reuse the buffer once the store let go of it.
    data: Bytes,
    /// Counts the part in the metrics until it lands or the upload is dropped.
    _held: crate::telemetry::metrics::PartBufferGuard,
}

/// The parts of one upload request.
pub(crate) struct PartPump<'a> {
    registry: &'a Registry,
    handle: UploadHandle,
    state_key: &'a str,
    hasher: ResumableSha256,
    next_number: u32,
    next_offset: u64,
    in_flight: VecDeque<InFlight>,
    part_size: usize,
    max_in_flight: usize,
}

impl<'a> PartPump<'a> {
    /// Continues the upload where `state` stands.
    pub(crate) fn new(
        registry: &'a Registry,
        handle: UploadHandle,
        state_key: &'a str,
        state: &UploadState,
        part_size: usize,
    ) -> Self {
        let budget = (IN_FLIGHT_BUDGET / part_size.max(1) as u64).max(1) as usize;
        Self {
            part_size,
            max_in_flight: registry.upload_concurrency.min(budget),
            registry,
            handle,
            state_key,
            hasher: state.hasher.clone(),
            next_number: state.parts.len() as u32 + 1,
            next_offset: state.received,
            in_flight: VecDeque::new(),
        }
    }

    /// An empty buffer for the next part.
    pub(crate) fn buffer(&self) -> BytesMut {
        self.registry.part_buffers.take(self.part_size)
    }

    /// The offset the next part starts at.
    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Hashes and sends a part; waits for older parts while too many are in flight.
    pub(crate) async fn send(
        &mut self,
        part: Bytes,
        state: &mut UploadState,
    ) -> RegistryResult<()> {
        self.hasher.update(&part);
        let blobs = self.registry.blobs.clone();
        let handle = self.handle.clone();
        let (number, offset) = (self.next_number, self.next_offset);
        self.next_number += 1;
        self.next_offset += part.len() as u64;
        let data = part.clone();
        let _held = crate::telemetry::metrics::part_buffer_held(part.len());
        let task =
            tokio::spawn(async move { blobs.write_part(&handle, number, offset, part).await });
        self.in_flight.push_back(InFlight {
            task,
            hasher: self.hasher.clone(),
            data,
            _held,
        });
        // Record parts as soon as they are durable, not only when the queue is full: a
        // replica that dies loses only the parts still in flight.
        while self.in_flight.len() >= self.max_in_flight
            || self.in_flight.front().is_some_and(|p| p.task.is_finished())
        {
            self.land_one(state).await?;
        }
        Ok(())
    }

    /// Waits for every part in flight.
    pub(crate) async fn drain(&mut self, state: &mut UploadState) -> RegistryResult<()> {
        while !self.in_flight.is_empty() {
            self.land_one(state).await?;
        }
        Ok(())
    }

    /// The oldest part in flight's write; polling it by reference loses nothing when the
    /// caller stops waiting, so it can race the request body.
    pub(crate) fn front_write(
        &mut self,
    ) -> Option<&mut tokio::task::JoinHandle<StoreResult<PartInfo>>> {
        self.in_flight.front_mut().map(|p| &mut p.task)
    }

    /// Records the oldest part in flight, whose write ended with `written`.
    pub(crate) async fn record_front(
        &mut self,
        written: Result<StoreResult<PartInfo>, tokio::task::JoinError>,
        state: &mut UploadState,
    ) -> RegistryResult<()> {
        let Some(next) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part =
            written.map_err(|e| RegistryError::Store(StoreError::Unavailable(e.to_string())))??;
        self.registry.part_buffers.give_back(next.data);
        let expected = Some(state.received);
        state.received += part.size;
        state.parts.push(part);
        state.hasher = next.hasher;
        self.registry
            .save_state(self.state_key, expected, state)
            .await
    }

    /// Waits for the oldest part in flight and records it.
    async fn land_one(&mut self, state: &mut UploadState) -> RegistryResult<()> {
        let Some(write) = self.front_write() else {
            return Ok(());
        };
        let written = write.await;
        self.record_front(written, state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_and_a_shared_one_is_not() {
        let pool = BufferPool::default();
        let mut first = pool.take(1024);
        first.extend_from_slice(&[7; 1024]);
        let frozen = first.freeze();
        let address = frozen.as_ptr();
        let still_held = frozen.clone();
        pool.give_back(frozen);
        assert_ne!(
            pool.take(1024).as_ptr(),
            address,
            "a buffer someone still holds is not reused"
        );
        drop(still_held);

        let mut second = pool.take(1024);
        second.extend_from_slice(&[8; 1024]);
        let frozen = second.freeze();
        let address = frozen.as_ptr();
        pool.give_back(frozen);
        let reused = pool.take(1024);
        assert_eq!(reused.as_ptr(), address);
        assert!(reused.is_empty() && reused.capacity() >= 1024);
        pool.give_back(reused.freeze());
        assert_ne!(
            pool.take(4096).as_ptr(),
            address,
            "too small a buffer is not handed out"
        );
        assert_eq!(
            pool.take(1024).as_ptr(),
            address,
            "it stays pooled for a part it fits"
        );
    }
}
