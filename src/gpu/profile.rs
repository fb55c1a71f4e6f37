//! Timing GPU work: profile mode, which times every dispatch and sums the time per kernel, and
//! [`Gpu::sync_timed`], which times one submission.

use std::collections::BTreeMap;
use std::time::Instant;

use super::recorder::Command;
use super::{Gpu, KernelId};
use crate::error::{Error, Result};

/// Dispatches per submission that profile mode times (two timestamps each, within the 4096
/// queries a set may hold).
const PROFILE_MAX_DISPATCHES: u32 = 2048;

/// The state of profile mode ([`Gpu::begin_profile`]).
#[derive(Default)]
pub(super) struct Profiling {
    /// Calls and GPU seconds per kernel so far.
    table: BTreeMap<KernelId, (u64, f64)>,
    /// The timestamps of the submission being encoded: the buffer to read them from, and the
    /// kernel of each dispatch.
    pending: Option<(wgpu::Buffer, Vec<KernelId>)>,
}

/// GPU time of one kernel over a profile ([`Gpu::end_profile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// `file::entry`.
    pub kernel: String,
    pub calls: u64,
    pub seconds: f64,
}

impl Gpu {
    /// A query-resolve buffer and a mappable copy of it, `bytes` long.
    fn timestamp_buffers(&self, bytes: u64) -> (wgpu::Buffer, wgpu::Buffer) {
        let buffer = |label, usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        (
            buffer(
                "timestamps",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            buffer(
                "timestamps read",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        )
    }

    /// Starts profile mode: until [`Gpu::end_profile`], every submission times each of its
    /// dispatches (in a compute pass of its own, then waits for the result). Needs timestamp
    /// queries; slows the work down, so the times are for comparing kernels, not for throughput.
    pub fn begin_profile(&self) -> Result<()> {
        if !self.has_timestamps() {
            return Err(Error::Gpu(format!(
                "profiling needs timestamp queries, which {} does not offer",
                self.adapter
            )));
        }
        self.flush()?;
        *self.profile.borrow_mut() = Some(Profiling::default());
        Ok(())
    }

    /// Runs the recorded work, ends profile mode and returns the GPU time per kernel, longest
    /// first.
    pub fn end_profile(&self) -> Result<Vec<KernelTime>> {
        self.sync()?;
        let profile = self.profile.borrow_mut().take().unwrap_or_default();
        let mut out: Vec<KernelTime> = profile
            .table
            .into_iter()
            .map(|((file, entry), (calls, seconds))| KernelTime {
                kernel: format!("{file}::{entry}"),
                calls,
                seconds,
            })
            .collect();
        out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(out)
    }

    /// Submits the recorded work, waits, and returns the GPU time it took in seconds: the sum of
    /// per-pass timestamps where the adapter has them, otherwise the wall time of submit + wait.
    pub fn sync_timed(&self) -> Result<f64> {
        if !self.has_timestamps() {
            let t = Instant::now();
            self.sync()?;
            return Ok(t.elapsed().as_secs_f64());
        }
        const MAX_PASSES: u32 = 64;
        let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timer"),
            ty: wgpu::QueryType::Timestamp,
            count: MAX_PASSES * 2,
        });
        let t = Instant::now();
        let (mut enc, passes) = self.encode(Some(&qs));
        if passes > MAX_PASSES || passes == 0 {
            let index = self.submit(enc)?;
            self.wait(index)?;
            return Ok(t.elapsed().as_secs_f64());
        }
        let bytes = passes as u64 * 16;
        let (resolve, read) = self.timestamp_buffers(bytes);
        enc.resolve_query_set(&qs, 0..passes * 2, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        let index = self.submit(enc)?;
        self.wait(index)?;
        let ticks: Vec<u64> = self.map_read(&read, bytes)?;
        let period = self.queue.get_timestamp_period() as f64;
        let total: u64 = ticks.chunks(2).map(|p| p[1].saturating_sub(p[0])).sum();
        Ok(total as f64 * period * 1e-9)
    }

    /// In profile mode, a query set for timing each of `commands`' dispatches (as many as one set
    /// holds), each in a compute pass of its own.
    pub(super) fn profile_queries(&self, commands: &[Command]) -> Option<wgpu::QuerySet> {
        self.profile.borrow().as_ref()?;
        let n = commands
            .iter()
            .filter(|c| matches!(c, Command::Dispatch { .. }))
            .count()
            .min(PROFILE_MAX_DISPATCHES as usize) as u32;
        (n > 0).then(|| {
            self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * n,
            })
        })
    }

    /// Resolves the profile queries `qs` of the dispatches of `kernels`, in order, for
    /// [`Gpu::profile_collect`] after the submission.
    pub(super) fn profile_resolve(
        &self,
        enc: &mut wgpu::CommandEncoder,
        qs: &wgpu::QuerySet,
        mut kernels: Vec<KernelId>,
    ) {
        kernels.truncate(qs.count() as usize / 2);
        let bytes = kernels.len() as u64 * 16;
        let (resolve, read) = self.timestamp_buffers(bytes);
        enc.resolve_query_set(qs, 0..2 * kernels.len() as u32, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        if let Some(p) = self.profile.borrow_mut().as_mut() {
            p.pending = Some((read, kernels));
        }
    }

    /// Waits for submission `index` and adds the times of its profiled dispatches to the table.
    pub(super) fn profile_collect(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        let pending = self
            .profile
            .borrow_mut()
            .as_mut()
            .and_then(|p| p.pending.take());
        let Some((read, kernels)) = pending else {
            return Ok(());
        };
        self.wait(index)?;
        let ticks: Vec<u64> = self.map_read(&read, read.size())?;
        let period = self.queue.get_timestamp_period() as f64 * 1e-9;
        if let Some(p) = self.profile.borrow_mut().as_mut() {
            for (k, t) in kernels.into_iter().zip(ticks.chunks(2)) {
                let e = p.table.entry(k).or_default();
                e.0 += 1;
                e.1 += t[1].saturating_sub(t[0]) as f64 * period;
            }
        }
        Ok(())
    }
}
