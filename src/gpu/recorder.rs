//! The command recorder: kernel launches, copies and clears are recorded and reach the GPU in
//! one command buffer at the next flush or read.

use std::sync::Arc;

use super::{BufferId, Gpu, Kernel, KernelId, Region, PARAM_BYTES};
use crate::error::{Error, Result};

/// One recorded command.
pub(super) enum Command {
    Dispatch {
        /// For profiles.
        kernel: KernelId,
        pipeline: Arc<wgpu::ComputePipeline>,
        bind_group: Arc<wgpu::BindGroup>,
        param_slot: u32,
        groups: [u32; 3],
    },
    Copy {
        src: Region,
        dst: Region,
    },
    Clear(Region),
}

impl Gpu {
    /// Records one dispatch of `kernel` with `params` in its uniform slot and `regions` bound to
    /// group 1 in order. Runs at the next [`Gpu::flush`]. In check mode the f32 bindings are
    /// checked for non-finite values before and after it.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        regions: &[Region],
        groups: [u32; 3],
    ) -> Result<()> {
        if self.checking() {
            let what = format!("{}::{}", kernel.file, kernel.entry);
            let scanned: Vec<(Option<usize>, Region)> = regions
                .iter()
                .enumerate()
                .filter(|(i, _)| kernel.words & (1 << i) == 0)
                .map(|(i, &r)| (Some(i), r))
                .collect();
            return self.checked(&what, &scanned, true, || {
                self.dispatch(kernel, params, regions, groups)
            });
        }
        assert_eq!(
            regions.len(),
            kernel.buffers,
            "{}::{} binds {} buffers",
            kernel.file,
            kernel.entry,
            kernel.buffers
        );
        let bytes = bytemuck::bytes_of(params);
        assert!(
            bytes.len() as u64 <= PARAM_BYTES,
            "parameter struct too large"
        );
        for r in regions {
            if r.bytes() > self.max_binding() {
                return Err(Error::OutOfMemory {
                    what: format!("a tensor bound to {}", kernel.entry),
                    needed: r.bytes(),
                    limit: self.max_binding(),
                    advice: " (max_storage_buffer_binding_size); use a smaller batch".into(),
                });
            }
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Gpu(format!(
                "{}::{} needs {groups:?} workgroups; the adapter allows {max} per dimension",
                kernel.file, kernel.entry
            )));
        }
        let pipeline = self.pipeline(kernel)?;
        let bind_group = self.bind_group(regions);
        let mut ring = self.params.borrow_mut();
        let slot = (ring.len() as u64 / PARAM_BYTES) as u32;
        ring.extend_from_slice(bytes);
        let padded = ring.len().next_multiple_of(PARAM_BYTES as usize);
        ring.resize(padded, 0);
        self.commands.borrow_mut().push(Command::Dispatch {
            kernel: (kernel.file, kernel.entry),
            pipeline,
            bind_group,
            param_slot: slot,
            groups,
        });
        Ok(())
    }

    /// Records a copy between two regions of equal length. Within one buffer (which
    /// `copy_buffer_to_buffer` forbids) it is a small kernel over the whole buffer.
    pub fn copy(&self, src: Region, dst: Region) -> Result<()> {
        assert_eq!(
            src.len, dst.len,
            "copy between regions of different lengths"
        );
        if self.checking() {
            return self.checked("copy", &[(None, dst)], false, || self.copy(src, dst));
        }
        if src.buffer != dst.buffer {
            self.commands.borrow_mut().push(Command::Copy { src, dst });
            return Ok(());
        }
        assert!(
            src.offset + src.bytes() <= dst.offset || dst.offset + dst.bytes() <= src.offset,
            "overlapping copy"
        );
        const COPY_WITHIN: Kernel = crate::kernel!("copy.wgsl", "copy_within", 1, words = 1);
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct Params {
            n: u32,
            src: u32,
            dst: u32,
            _pad: u32,
        }
        let whole = Region {
            buffer: src.buffer,
            offset: 0,
            len: (self.buffer(src.buffer).size() / 4) as usize,
        };
        let params = Params {
            n: src.len as u32,
            src: (src.offset / 4) as u32,
            dst: (dst.offset / 4) as u32,
            _pad: 0,
        };
        let groups = (src.len as u32).div_ceil(256);
        let grid = [groups.min(65535), groups.div_ceil(65535), 1];
        self.dispatch(&COPY_WITHIN, &params, &[whole], grid)
    }

    /// Records zero-filling a region.
    pub fn clear(&self, r: Region) {
        self.commands.borrow_mut().push(Command::Clear(r));
    }

    /// Number of commands recorded and not yet submitted.
    pub fn pending(&self) -> usize {
        self.commands.borrow().len()
    }

    /// Writes host data into a region. Recorded work that has not been submitted is flushed first,
    /// because `write_buffer` lands before every command of the next submission.
    pub fn upload<T: bytemuck::Pod>(&self, dst: Region, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        assert_eq!(
            bytes.len() as u64,
            dst.bytes(),
            "upload size differs from region"
        );
        if self.pending() > 0 {
            self.flush()?;
        }
        self.queue
            .write_buffer(&self.buffer(dst.buffer), dst.offset, bytes);
        Ok(())
    }

    fn ensure_ring(&self, bytes: u64) {
        let mut ring = self.ring.borrow_mut();
        if ring.as_ref().is_some_and(|r| r.2 >= bytes) {
            return;
        }
        let size = bytes.next_power_of_two().max(64 * 1024);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("parameter ring"),
            size,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("parameter ring"),
            layout: &self.param_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buffer,
                    offset: 0,
                    size: std::num::NonZeroU64::new(PARAM_BYTES),
                }),
            }],
        });
        self.count(|c| {
            c.buffers_created += 1;
            c.bytes_allocated += size;
        });
        *ring = Some((buffer, bg, size));
    }

    pub(super) fn encode(&self, timer: Option<&wgpu::QuerySet>) -> (wgpu::CommandEncoder, u32) {
        let commands = std::mem::take(&mut *self.commands.borrow_mut());
        let params = std::mem::take(&mut *self.params.borrow_mut());
        if !params.is_empty() {
            self.ensure_ring(params.len() as u64);
        }
        let ring = self.ring.borrow();
        if let Some((buf, _, _)) = ring.as_ref().filter(|_| !params.is_empty()) {
            self.queue.write_buffer(buf, 0, &params);
        }
        let buffers = self.buffers.borrow();
        let buf = |id: BufferId| buffers[id.0].as_ref().expect("use of a freed buffer");
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        // In profile mode (and not already timed per pass) every dispatch gets a pass of its own
        // with timestamps around it.
        let profiled = match timer {
            None => self.profile_queries(&commands),
            Some(_) => None,
        };
        let timer = timer.or(profiled.as_ref());
        let mut kernels = vec![];
        let mut passes = 0u32;
        let mut dispatches = 0u64;
        let mut i = 0;
        while i < commands.len() {
            match &commands[i] {
                Command::Copy { src, dst } => {
                    enc.copy_buffer_to_buffer(
                        buf(src.buffer),
                        src.offset,
                        buf(dst.buffer),
                        dst.offset,
                        src.bytes(),
                    );
                    i += 1;
                }
                Command::Clear(r) => {
                    enc.clear_buffer(buf(r.buffer), r.offset, Some(r.bytes()));
                    i += 1;
                }
                Command::Dispatch { .. } => {
                    let timestamp_writes = timer.filter(|q| passes * 2 + 1 < q.count()).map(|q| {
                        wgpu::ComputePassTimestampWrites {
                            query_set: q,
                            beginning_of_pass_write_index: Some(passes * 2),
                            end_of_pass_write_index: Some(passes * 2 + 1),
                        }
                    });
                    passes += 1;
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes,
                    });
                    let (_, ring_bg, _) = ring.as_ref().expect("dispatch without parameter ring");
                    while let Some(Command::Dispatch {
                        kernel,
                        pipeline,
                        bind_group,
                        param_slot,
                        groups,
                    }) = commands.get(i)
                    {
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, ring_bg, &[*param_slot * PARAM_BYTES as u32]);
                        pass.set_bind_group(1, Some(&**bind_group), &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        dispatches += 1;
                        i += 1;
                        if profiled.is_some() {
                            kernels.push(*kernel);
                            break;
                        }
                    }
                }
            }
        }
        self.count(|c| c.dispatches += dispatches);
        if let Some(qs) = profiled {
            self.profile_resolve(&mut enc, &qs, kernels);
        }
        (enc, passes)
    }

    pub(super) fn submit(&self, enc: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        let index = self.queue.submit([enc.finish()]);
        self.count(|c| c.submissions += 1);
        self.check_error()?;
        self.profile_collect(index.clone())?;
        Ok(index)
    }

    fn check_error(&self) -> Result<()> {
        match self.error.lock().unwrap().take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    pub(super) fn wait(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check_error()
    }

    /// Submits everything recorded so far as one command buffer (no-op when nothing is pending).
    pub fn flush(&self) -> Result<()> {
        if self.pending() == 0 {
            return Ok(());
        }
        let (enc, _) = self.encode(None);
        self.submit(enc)?;
        Ok(())
    }

    /// Submits the recorded work and blocks until the GPU has finished it.
    pub fn sync(&self) -> Result<()> {
        let (enc, _) = self.encode(None);
        let index = self.submit(enc)?;
        self.wait(index)
    }

    pub(super) fn map_read<T: bytemuck::Pod>(
        &self,
        buf: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<T>> {
        let (tx, rx) = std::sync::mpsc::channel();
        buf.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for a readback: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback was never completed".into()))?
            .map_err(|e| Error::Gpu(format!("mapping a readback buffer: {e}")))?;
        let out = {
            let view = buf
                .get_mapped_range(0..bytes)
                .map_err(|e| Error::Gpu(format!("reading back: {e}")))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        buf.unmap();
        Ok(out)
    }

    /// Runs all recorded work and returns the contents of `r` (as f32 or u32 words).
    pub fn read<T: bytemuck::Pod>(&self, r: Region) -> Result<Vec<T>> {
        assert_eq!(std::mem::size_of::<T>(), 4, "regions hold 32-bit words");
        let bytes = r.bytes().max(4).next_multiple_of(4);
        {
            let mut staging = self.staging.borrow_mut();
            if staging.as_ref().is_none_or(|s| s.size() < bytes) {
                let size = bytes.next_power_of_two();
                *staging = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("staging"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }));
                self.count(|c| {
                    c.buffers_created += 1;
                    c.bytes_allocated += size;
                });
            }
        }
        let (mut enc, _) = self.encode(None);
        let staging = self.staging.borrow();
        let staging = staging.as_ref().unwrap();
        if r.len > 0 {
            enc.copy_buffer_to_buffer(&self.buffer(r.buffer), r.offset, staging, 0, r.bytes());
        }
        let index = self.submit(enc)?;
        self.wait(index)?;
        if r.len == 0 {
            return Ok(vec![]);
        }
        self.map_read(staging, r.bytes())
    }
}
