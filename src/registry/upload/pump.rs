//! Sends one file's parts to the blob store, several in flight, and records each part in
//! the upload state as it becomes durable, in order, so that the recorded state is always
//! a contiguous prefix a client can resume from.

use std::collections::VecDeque;

use bytes::Bytes;

use super::UploadState;
use crate::digest::ResumableSha256;
use crate::registry::budget::PartBuffer;
use crate::registry::{Registry, RegistryError, RegistryResult};
use crate::store::{PartInfo, StoreError, StoreResult, UploadHandle};

/// Bytes of parts one upload may have in flight; with parts larger than this (files over
/// about 80 GB) one part is in flight at a time.
const IN_FLIGHT_BUDGET: u64 = 64 << 20;

struct InFlight {
    /// Writes the part, then gives its buffer back to the part memory.
    task: tokio::task::JoinHandle<StoreResult<PartInfo>>,
    /// The hash state after this part, recorded when the part lands.
    hasher: ResumableSha256,
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
    /// The part being filled; reserved from the part memory when its first byte comes.
    filling: Option<PartBuffer>,
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
            next_number: state.recorded() + 1,
            next_offset: state.received,
            in_flight: VecDeque::new(),
            filling: None,
        }
    }

    /// Adds body bytes to the part being filled and sends each part that fills. Each part
    /// is allocated once, at its final size, from the server's part memory; when that is
    /// spent this waits for a buffer instead of allocating past it.
    pub(crate) async fn feed(
        &mut self,
        mut chunk: Bytes,
        state: &mut UploadState,
    ) -> RegistryResult<()> {
        while !chunk.is_empty() {
            let mut buffer = match self.filling.take() {
                Some(b) => b,
                None => self.registry.part_memory.take(self.part_size).await,
            };
            let take = (self.part_size - buffer.buf.len()).min(chunk.len());
            buffer.buf.extend_from_slice(&chunk.split_to(take));
            if buffer.buf.len() == self.part_size {
                self.send(buffer, state).await?;
            } else {
                self.filling = Some(buffer);
            }
        }
        Ok(())
    }

    /// Sends the bytes being filled as the file's last, short part.
    pub(crate) async fn send_tail(&mut self, state: &mut UploadState) -> RegistryResult<()> {
        match self.filling.take() {
            Some(buffer) if !buffer.buf.is_empty() => self.send(buffer, state).await,
            _ => Ok(()),
        }
    }

    /// Takes the bytes being filled, fewer than a part, for a caller that keeps them
    /// elsewhere until more come; their buffer goes back to the part memory.
    pub(crate) fn take_filling(&mut self) -> Bytes {
        match self.filling.take() {
            Some(buffer) => {
                let bytes = Bytes::copy_from_slice(&buffer.buf);
                self.registry.part_memory.put_back(buffer);
                bytes
            }
            None => Bytes::new(),
        }
    }

    /// Hashes and sends a part; waits for older parts while too many are in flight.
    async fn send(&mut self, part: PartBuffer, state: &mut UploadState) -> RegistryResult<()> {
        let (part, reservation) = part.freeze();
        self.hasher.update(&part);
        let blobs = self.registry.blobs.clone();
        let memory = self.registry.part_memory.clone();
        let handle = self.handle.clone();
        let (number, offset) = (self.next_number, self.next_offset);
        self.next_number += 1;
        self.next_offset += part.len() as u64;
        let _held = crate::telemetry::metrics::part_buffer_held(part.len());
        // The buffer goes back as soon as the store is done with it, not when this upload
        // gets round to recording the part: uploads waiting for part memory must never
        // wait on each other.
        let bytes = part.len();
        let write = async move {
            let written = blobs
                .write_part(&handle, number, offset, part.clone())
                .await;
            memory.give_back(part, reservation);
            written
        };
        let task = spawn_part_write(write, number, offset, bytes);
        self.in_flight.push_back(InFlight {
            task,
            hasher: self.hasher.clone(),
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
        let expected = Some(state.received);
        state.received += part.size;
        state.count = state.recorded() + 1;
        state.hasher = next.hasher;
        self.registry
            .save_state(self.state_key, expected, state, Some(&part))
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

impl Drop for PartPump<'_> {
    /// A body that stopped short leaves its part unfinished: keep the buffer for reuse.
    fn drop(&mut self) {
        if let Some(buffer) = self.filling.take() {
            self.registry.part_memory.put_back(buffer);
        }
    }
}

/// Runs the write of part `number` as a task of its own, inside a `part` span when traces
/// are exported, so that its store calls stay in the request's trace.
pub(crate) fn spawn_part_write<F>(
    write: F,
    number: u32,
    offset: u64,
    bytes: usize,
) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    if crate::telemetry::trace::enabled() {
        use tracing::Instrument;
        let span = tracing::info_span!("part", number, offset, bytes);
        tokio::spawn(write.instrument(span))
    } else {
        tokio::spawn(write)
    }
}
