//! Tensors and the arenas they live in.
//!
//! The memory plan of a training run, in one place:
//! - **parameters**: one buffer per model ([`crate::nn::Store`]), gradients and optimiser state in
//!   buffers of the same layout, so an optimiser or EMA update is one dispatch over all of them;
//! - **persistent**: datasets, queues, running statistics — allocated once, never reset;
//! - **step**: activations and their gradients — a bump [`Arena`] reset at the start of every step.
//!   A step makes the same allocations in the same order each time, so after the first step every
//!   allocation lands on an offset already backed by a buffer and no new GPU buffer is created.

use crate::error::{Error, Result};
use crate::gpu::{BufferId, Gpu, Region};

/// Up to four dimensions, row-major.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; 4],
    rank: usize,
}

impl Shape {
    pub fn new(dims: &[usize]) -> Shape {
        assert!(dims.len() <= 4, "at most 4 dimensions");
        let mut d = [1; 4];
        d[..dims.len()].copy_from_slice(dims);
        Shape {
            dims: d,
            rank: dims.len(),
        }
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// Size of dimension `i`; negative counts from the end.
    pub fn dim(&self, i: isize) -> usize {
        let i = if i < 0 { self.rank as isize + i } else { i };
        self.dims[i as usize]
    }

    /// Rows and columns when read as a matrix: the last dimension is the columns.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = if self.rank == 0 { 1 } else { self.dim(-1) };
        (self.numel() / cols.max(1), cols)
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Shape {
        Shape::new(d)
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Shape {
        Shape::new(&d)
    }
}

/// A view of GPU memory with a shape. Copyable handle: it does not own its memory, the arena does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tensor {
    pub region: Region,
    pub shape: Shape,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// The same memory under another shape with the same element count.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        assert_eq!(
            shape.numel(),
            self.numel(),
            "reshape changes the element count"
        );
        Tensor {
            region: self.region,
            shape,
        }
    }
}

/// A bump allocator over a growing list of GPU buffers ("chunks").
pub struct Arena {
    name: &'static str,
    chunk_bytes: u64,
    chunks: Vec<(BufferId, u64)>,
    current: usize,
    cursor: u64,
    used: u64,
    peak: u64,
}

impl Arena {
    /// `chunk_bytes` is the size of each backing buffer; larger single requests get their own.
    pub fn new(name: &'static str, chunk_bytes: u64) -> Arena {
        Arena {
            name,
            chunk_bytes,
            chunks: vec![],
            current: 0,
            cursor: 0,
            used: 0,
            peak: 0,
        }
    }

    /// An arena whose chunks are as large as one binding may be (capped at 256 MiB).
    pub fn for_gpu(name: &'static str, gpu: &Gpu) -> Arena {
        Arena::new(name, gpu.max_binding().min(256 << 20))
    }

    /// Allocates `len` 32-bit words. Contents are unspecified (zero the first time, then whatever
    /// the previous step left).
    pub fn alloc(&mut self, gpu: &Gpu, len: usize) -> Result<Region> {
        let bytes = (len as u64 * 4).max(4);
        if bytes > gpu.max_binding() {
            return Err(Error::OutOfMemory {
                what: format!("a tensor of {len} floats in the {} arena", self.name),
                needed: bytes,
                limit: gpu.max_binding(),
                advice: " (max_storage_buffer_binding_size); reduce the batch size".into(),
            });
        }
        loop {
            if let Some(&(buffer, size)) = self.chunks.get(self.current) {
                let offset = self.cursor.next_multiple_of(gpu.align);
                if offset + bytes <= size {
                    self.cursor = offset + bytes;
                    self.used += bytes;
                    self.peak = self.peak.max(self.used);
                    return Ok(Region {
                        buffer,
                        offset,
                        len,
                    });
                }
                if self.cursor > 0 {
                    self.current += 1;
                    self.cursor = 0;
                    continue;
                }
            }
            // The current chunk is empty and too small (or missing): put a big enough one here.
            // Chunks grow geometrically so that small arenas stay small.
            let grown = (self.capacity().max(1 << 20)).min(self.chunk_bytes);
            let size = grown.max(bytes);
            let id = gpu.create_buffer(size, self.name)?;
            if self.current < self.chunks.len() {
                self.chunks.insert(self.current, (id, size));
            } else {
                self.chunks.push((id, size));
            }
        }
    }

    pub fn tensor(&mut self, gpu: &Gpu, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        Ok(Tensor {
            region: self.alloc(gpu, shape.numel())?,
            shape,
        })
    }

    /// Allocates and fills a tensor from host data.
    pub fn upload(&mut self, gpu: &Gpu, shape: impl Into<Shape>, data: &[f32]) -> Result<Tensor> {
        let t = self.tensor(gpu, shape)?;
        gpu.upload(t.region, data)?;
        Ok(t)
    }

    /// Frees everything at once; the buffers stay and are reused by the next allocations.
    pub fn reset(&mut self) {
        self.current = 0;
        self.cursor = 0;
        self.used = 0;
    }

    /// Records zero-filling all the arena's memory, so that values an earlier step left behind
    /// cannot be mistaken for new ones (the trainer's diagnostic re-run of a non-finite step).
    pub fn clear(&self, gpu: &Gpu) {
        for &(buffer, size) in &self.chunks {
            gpu.clear(Region {
                buffer,
                offset: 0,
                len: (size / 4) as usize,
            });
        }
    }

    /// Returns the arena's buffers to the device.
    pub fn free(self, gpu: &Gpu) -> Result<()> {
        for (id, _) in self.chunks {
            gpu.free(id)?;
        }
        Ok(())
    }

    /// Bytes allocated since the last reset.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Largest `used()` ever seen.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Bytes held in GPU buffers.
    pub fn capacity(&self) -> u64 {
        self.chunks.iter().map(|c| c.1).sum()
    }
}
