//! Kernel benchmarks: GFLOP/s and GB/s per kernel on the chosen adapter.
//!
//! `cargo bench --bench kernels [-- FILTER]` runs the cases whose name contains FILTER.
//! GPU time comes from timestamp queries where the adapter has them, otherwise from device-synced
//! wall time (submit + wait inside the timed loop).

use contrastive::{Gpu, Result};

mod batchnorm;
mod conv;
mod elementwise;
mod harness;
mod matmul;
mod reduce;
mod sequence;

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut b = harness::Bench::new(&gpu, filter);
    b.header();
    matmul::run(&mut b)?;
    reduce::run(&mut b)?;
    conv::run(&mut b)?;
    elementwise::run(&mut b)?;
    batchnorm::run(&mut b)?;
    sequence::run(&mut b)?;
    Ok(())
}
