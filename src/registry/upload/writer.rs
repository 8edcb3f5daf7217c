//! The part writer both front doors use: one request's parts sent to the blob store,
//! several in flight, each by a task of its own whose buffer goes back to the part memory
//! as soon as the store is done with it; parts land oldest first and are recorded in the
//! upload state, in the request's order, by a [`RecordPart`] that knows how the upload
//! keeps its parts (a contiguous prefix, or parts of ranges in any order).

use std::collections::VecDeque;
use std::future::Future;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use tokio::task::{JoinError, JoinHandle};

use super::{part_at, UploadState};
use crate::registry::budget::PartBuffer;
use crate::registry::{Registry, RegistryError, RegistryResult};
use crate::store::{PartInfo, StoreError, StoreResult, UploadHandle};
use crate::telemetry::metrics::{part_buffer_held, PartBufferGuard};

/// Bytes of parts one request may have in flight; with parts larger than this (files over
/// about 80 GB) one part is in flight at a time.
const IN_FLIGHT_BUDGET: u64 = 64 << 20;

/// How an upload keeps its parts: what a request holds with each part it sends, and how
/// a durable part is recorded in the upload state.
pub(crate) trait RecordPart {
    /// What the request keeps with each part in flight, for recording it.
    type With;

    /// Takes note of a part's bytes as the request sends it, in the request's order.
    fn sending(&mut self, part: &[u8]) -> Self::With;

    /// What becomes of a part's bytes once the store holds them. Only durable bytes go
    /// on: a write that failed is sent again, maybe by another request.
    fn durable(&self, _offset: u64, _part: Bytes) -> Option<BoxFuture<'static, ()>> {
        None
    }

    /// Records `part`, durable now, leaving `state` as recorded.
    async fn record(
        &mut self,
        part: PartInfo,
        with: Self::With,
        state: &mut UploadState,
    ) -> RegistryResult<()>;
}

/// Bytes of a part a body is sending: buffered for writing, or skipped when the part is
/// durable already.
enum Filling {
    /// Bytes to write, reserved from the part memory.
    Write(PartBuffer),
    /// A durable part: its bytes are read and dropped.
    Skip,
}

/// A part being written, and what it holds until it lands.
struct InFlight<T> {
    number: u32,
    task: JoinHandle<StoreResult<PartInfo>>,
    with: T,
    /// Counts the part in the metrics until it lands or the request is dropped.
    _counted: PartBufferGuard,
}

/// Writes the parts of one request and records each as it lands.
pub(crate) struct PartWriter<'a, R: RecordPart> {
    registry: &'a Registry,
    handle: UploadHandle,
    part_size: u64,
    in_flight: VecDeque<InFlight<R::With>>,
    max_in_flight: usize,
    /// The file's byte the body's next byte is.
    at: u64,
    /// The part being filled; reserved from the part memory when its first byte comes.
    filling: Option<Filling>,
    /// Records the parts that land.
    pub(crate) recorder: R,
}

impl<'a, R: RecordPart> PartWriter<'a, R> {
    /// Writes parts of `part_size` bytes into the multipart upload `handle`, from a body
    /// starting at byte `at` of the file, a part boundary.
    pub(crate) fn new(
        registry: &'a Registry,
        handle: UploadHandle,
        (at, part_size): (u64, u64),
        recorder: R,
    ) -> Self {
        let part_size = part_size.max(1);
        let fit = (IN_FLIGHT_BUDGET / part_size).max(1) as usize;
        Self {
            registry,
            handle,
            part_size,
            in_flight: VecDeque::new(),
            max_in_flight: registry.upload_concurrency.min(fit),
            at,
            filling: None,
            recorder,
        }
    }

    /// Cuts the body's next bytes at the part boundaries of a file of `size` bytes
    /// (`u64::MAX` while unknown) and writes each part that fills. A part durable already
    /// is not written again: its bytes are dropped. Each part is allocated once, at its
    /// final size, from the server's part memory; when that is spent this waits for a
    /// buffer instead of allocating past it.
    pub(crate) async fn feed(
        &mut self,
        mut chunk: Bytes,
        size: u64,
        state: &mut UploadState,
    ) -> RegistryResult<()> {
        while !chunk.is_empty() {
            let number = part_at(self.at, self.part_size);
            let end = (u64::from(number) * self.part_size).min(size);
            let mut part = match self.filling.take() {
                Some(part) => part,
                None if state.holds(number) => Filling::Skip,
                None => {
                    let buffer = self.registry.part_memory.take(self.part_size as usize);
                    Filling::Write(buffer.await)
                }
            };
            let take = (end - self.at).min(chunk.len() as u64) as usize;
            let bytes = chunk.split_to(take);
            self.at += take as u64;
            match &mut part {
                Filling::Write(buffer) => buffer.buf.extend_from_slice(&bytes),
                Filling::Skip => {}
            }
            match part {
                Filling::Write(buffer) if self.at == end => {
                    self.write(number, buffer, state).await?
                }
                Filling::Skip if self.at == end => {}
                unfinished => self.filling = Some(unfinished),
            }
        }
        Ok(())
    }

    /// Takes `buffer`, filled elsewhere with the body's next bytes, as the part being
    /// filled, and writes it when those bytes end the part (the last part of a file of
    /// `size` bytes, `u64::MAX` while unknown). The bytes keep the reservation they were
    /// read into: a caller that collected them before it could start the upload never
    /// holds a second buffer for them.
    pub(crate) async fn adopt(
        &mut self,
        buffer: PartBuffer,
        size: u64,
        state: &mut UploadState,
    ) -> RegistryResult<()> {
        if buffer.buf.is_empty() {
            self.registry.part_memory.put_back(buffer);
            return Ok(());
        }
        let number = part_at(self.at, self.part_size);
        let end = (u64::from(number) * self.part_size).min(size);
        let len = buffer.buf.len() as u64;
        if self.filling.is_some() || state.holds(number) || self.at + len > end {
            // Not the start of a part to write (the part size changed under an upload
            // that was cut): cut the bytes as any body's, the buffer going back first.
            let bytes = Bytes::copy_from_slice(&buffer.buf);
            self.registry.part_memory.put_back(buffer);
            return self.feed(bytes, size, state).await;
        }
        self.at += len;
        match self.at == end {
            true => self.write(number, buffer, state).await,
            false => {
                self.filling = Some(Filling::Write(buffer));
                Ok(())
            }
        }
    }

    /// Takes the part being filled, with its reservation, for a caller that keeps its
    /// bytes elsewhere until more come.
    pub(crate) fn take_filling(&mut self) -> Option<PartBuffer> {
        match self.filling.take() {
            Some(Filling::Write(buffer)) => Some(buffer),
            _ => None,
        }
    }

    /// Gives the buffer of a part the body stopped short of back to the part memory.
    pub(crate) fn discard_filling(&mut self) {
        if let Some(Filling::Write(buffer)) = self.filling.take() {
            self.registry.part_memory.put_back(buffer);
        }
    }

    /// Starts writing part `number`; records the older parts that are done, and waits for
    /// the oldest while too many are in flight.
    async fn write(
        &mut self,
        number: u32,
        buffer: PartBuffer,
        state: &mut UploadState,
    ) -> RegistryResult<()> {
        let with = self.recorder.sending(&buffer.buf);
        let offset = u64::from(number - 1) * self.part_size;
        let (part, reservation) = buffer.freeze();
        let counted = part_buffer_held(part.len());
        let (blobs, memory) = (
            self.registry.blobs.clone(),
            self.registry.part_memory.clone(),
        );
        let handle = self.handle.clone();
        let bytes = part.len();
        let durable = self.recorder.durable(offset, part.clone());
        // The buffer goes back as soon as the store is done with it, not when this request
        // gets round to recording the part: uploads waiting for part memory must never
        // wait on each other.
        let write = async move {
            let written = blobs
                .write_part(&handle, number, offset, part.clone())
                .await;
            match (durable, written.is_ok()) {
                (Some(durable), true) => durable.await,
                // Dropped before the buffer goes back, so that it can be reused.
                (durable, _) => drop(durable),
            }
            memory.give_back(part, reservation);
            written
        };
        self.in_flight.push_back(InFlight {
            number,
            task: spawn_part_write(write, number, offset, bytes),
            with,
            _counted: counted,
        });
        // Record parts as soon as they are durable, not only when the queue is full: a
        // replica that dies loses only the parts still in flight.
        while self.in_flight.len() >= self.max_in_flight
            || self.in_flight.front().is_some_and(|p| p.task.is_finished())
        {
            self.land_oldest(state).await?;
        }
        Ok(())
    }

    /// The body's next chunk; parts that land while the client is slow are recorded
    /// meanwhile, so that the status a resuming client reads is as far as the bytes
    /// durably are.
    pub(crate) async fn next_chunk<S, E>(
        &mut self,
        body: &mut S,
        state: &mut UploadState,
    ) -> RegistryResult<Option<Result<Bytes, E>>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        loop {
            // Polling the oldest write by reference loses nothing when the body wins.
            let oldest = self.in_flight.front_mut().map(|p| &mut p.task);
            let written = tokio::select! {
                biased;
                chunk = body.next() => return Ok(chunk),
                Some(written) = async { match oldest { Some(w) => Some(w.await), None => None } } => written,
            };
            self.record_oldest(written, state).await?;
        }
    }

    /// Waits for every part in flight and records it.
    pub(crate) async fn drain(&mut self, state: &mut UploadState) -> RegistryResult<()> {
        while !self.in_flight.is_empty() {
            self.land_oldest(state).await?;
        }
        Ok(())
    }

    /// Waits for the oldest part in flight and records it.
    async fn land_oldest(&mut self, state: &mut UploadState) -> RegistryResult<()> {
        let Some(oldest) = self.in_flight.front_mut() else {
            return Ok(());
        };
        let written = (&mut oldest.task).await;
        self.record_oldest(written, state).await
    }

    /// Records the oldest part in flight, whose write ended with `written`.
    async fn record_oldest(
        &mut self,
        written: Result<StoreResult<PartInfo>, JoinError>,
        state: &mut UploadState,
    ) -> RegistryResult<()> {
        let Some(landed) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part =
            written.map_err(|e| RegistryError::Store(StoreError::Unavailable(e.to_string())))??;
        debug_assert_eq!(part.number, landed.number);
        self.recorder.record(part, landed.with, state).await
    }
}

/// Runs the write of part `number` as a task of its own, inside a `part` span when traces
/// are exported, so that its store calls stay in the request's trace.
fn spawn_part_write<F>(write: F, number: u32, offset: u64, bytes: usize) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
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

impl<R: RecordPart> Drop for PartWriter<'_, R> {
    fn drop(&mut self) {
        self.discard_filling();
    }
}
