//! Sends one file's parts to the blob store, several in flight, and records each part in
//! the upload state as it becomes durable, in order, so that the recorded state is always
//! a contiguous prefix a client can resume from.

use std::collections::VecDeque;

use bytes::Bytes;

use super::push::UploadState;
use super::{Registry, RegistryError, RegistryResult};
use crate::digest::ResumableSha256;
use crate::store::{PartInfo, StoreError, StoreResult, UploadHandle};

struct InFlight {
    task: tokio::task::JoinHandle<StoreResult<PartInfo>>,
    /// The hash state after this part, recorded when the part lands.
    hasher: ResumableSha256,
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
}

impl<'a> PartPump<'a> {
    /// Continues the upload where `state` stands.
    pub(crate) fn new(
        registry: &'a Registry,
        handle: UploadHandle,
        state_key: &'a str,
        state: &UploadState,
    ) -> Self {
        Self {
            registry,
            handle,
            state_key,
            hasher: state.hasher.clone(),
            next_number: state.parts.len() as u32 + 1,
            next_offset: state.received,
            in_flight: VecDeque::new(),
        }
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
        let task =
            tokio::spawn(async move { blobs.write_part(&handle, number, offset, part).await });
        self.in_flight.push_back(InFlight {
            task,
            hasher: self.hasher.clone(),
        });
        // Record parts as soon as they are durable, not only when the queue is full: a
        // replica that dies loses only the parts still in flight.
        while self.in_flight.len() >= self.registry.upload_concurrency
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

    /// Waits for the oldest part in flight and records it.
    async fn land_one(&mut self, state: &mut UploadState) -> RegistryResult<()> {
        let Some(next) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part = next
            .task
            .await
            .map_err(|e| RegistryError::Store(StoreError::Unavailable(e.to_string())))??;
        let expected = Some(state.received);
        state.received += part.size;
        state.parts.push(part);
        state.hasher = next.hasher;
        self.registry
            .save_state(self.state_key, expected, state)
            .await
    }
}
