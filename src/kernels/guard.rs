//! The non-finite guard's kernels (`shaders/guard.wgsl`): a scan that raises a flag word when a
//! region holds a NaN or an infinity, and a copy that runs only when a flag word is (or is not)
//! raised. Both read the data as bits, so any region of 32-bit words can be scanned or copied.
//!
//! A training step scans its loss and gradients into one flag word; the optimiser, MoCo's queue
//! write and the roll-back of the state the forward pass changed all read that word on the GPU
//! and skip themselves, so a non-finite step changes nothing and is still one submission.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, Region};
use crate::kernel;

const CHECK: Kernel = kernel!("guard.wgsl", "check", 2, words = 0b11);
const COPY_IF: Kernel = kernel!("guard.wgsl", "copy_if", 3, words = 0b111);

const WG: usize = 256;
/// Words per invocation aimed for: the scan is one load and one test per word.
const PER_THREAD: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    threads: u32,
    slot: u32,
    mode: u32,
    src: u32,
    dst: u32,
    _pad: [u32; 2],
}

/// `r` widened at its start down to the storage offset alignment (a binding must start there),
/// and the number of words it was widened by.
fn aligned(gpu: &Gpu, r: Region) -> (Region, u32) {
    let base = r.offset - r.offset % gpu.align;
    let skip = ((r.offset - base) / 4) as usize;
    let region = Region {
        buffer: r.buffer,
        offset: base,
        len: r.len + skip,
    };
    (region, skip as u32)
}

fn groups(gpu: &Gpu, n: usize) -> usize {
    n.div_ceil(WG * PER_THREAD)
        .clamp(1, gpu.limits.max_compute_workgroups_per_dimension as usize)
}

/// Raises word `slot` of `flags` (sets it to 1) when `x` holds a NaN or an infinity, or always with
/// `force` (a dry run that must skip its updates). Never lowers it: clear the word first. Also the
/// scan of the finite-check mode: pass it to [`Gpu::begin_finite_checks`].
pub fn check_finite(gpu: &Gpu, x: Region, flags: Region, slot: usize, force: bool) -> Result<()> {
    if slot >= flags.len {
        return Err(Error::shape(
            "check_finite",
            format!("flag word {slot} of {} words", flags.len),
        ));
    }
    let g = groups(gpu, x.len);
    let (xa, src) = aligned(gpu, x);
    let p = Params {
        n: x.len as u32,
        threads: (g * WG) as u32,
        slot: slot as u32,
        mode: force as u32,
        src,
        dst: 0,
        _pad: [0; 2],
    };
    gpu.dispatch(&CHECK, &p, &[xa, flags], [g as u32, 1, 1])
}

/// When the copy runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// The flag is not raised: the step is finite (MoCo's queue write).
    Finite,
    /// The flag is raised: the step was skipped (putting back state it changed).
    NonFinite,
}

/// `dst ← src` (equal lengths) when word 0 of `flag` says `when`; otherwise `dst` is untouched.
pub fn copy_if(gpu: &Gpu, src: Region, dst: Region, flag: Region, when: When) -> Result<()> {
    if src.len != dst.len {
        return Err(Error::shape(
            "copy_if",
            format!("{} words into {}", src.len, dst.len),
        ));
    }
    let g = groups(gpu, src.len);
    let (sa, s) = aligned(gpu, src);
    let (da, d) = aligned(gpu, dst);
    let p = Params {
        n: src.len as u32,
        threads: (g * WG) as u32,
        slot: 0,
        mode: (when == When::NonFinite) as u32,
        src: s,
        dst: d,
        _pad: [0; 2],
    };
    gpu.dispatch(&COPY_IF, &p, &[sa, flag.slice(0, 1), da], [g as u32, 1, 1])
}

/// CPU reference of the scan: whether any word is a NaN or an infinity.
pub fn reference_non_finite(words: &[u32]) -> bool {
    words.iter().any(|w| !f32::from_bits(*w).is_finite())
}
