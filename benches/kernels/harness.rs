//! Timing and reporting shared by the kernel benches.

use contrastive::{Gpu, Result};

pub struct Bench<'g> {
    pub gpu: &'g Gpu,
    filter: Option<String>,
}

impl<'g> Bench<'g> {
    pub fn new(gpu: &'g Gpu, filter: Option<String>) -> Self {
        Bench { gpu, filter }
    }

    pub fn header(&self) {
        println!("adapter: {}", self.gpu.adapter);
        println!(
            "timing: {}",
            if self.gpu.has_timestamps() {
                "GPU timestamp queries"
            } else {
                "device-synced wall time"
            }
        );
        println!(
            "{:<44} {:>10} {:>10} {:>10}",
            "case", "ms", "GFLOP/s", "GB/s"
        );
    }

    pub fn wants(&self, name: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
    }

    /// Runs `record` (which records one launch of the kernel) once to warm up, then times batches
    /// of launches, each batch submitted and waited for, until ~`budget_s` seconds have passed.
    /// Prints and returns the median time per launch in seconds.
    pub fn run(
        &mut self,
        name: &str,
        flops: f64,
        bytes: f64,
        budget_s: f64,
        mut record: impl FnMut() -> Result<()>,
    ) -> Result<Option<f64>> {
        if !self.wants(name) {
            return Ok(None);
        }
        record()?;
        let warm = self.gpu.sync_timed()?;
        let per_batch = ((0.05 / warm.max(1e-6)) as usize).clamp(1, 32);
        let mut samples = vec![];
        let start = std::time::Instant::now();
        while samples.len() < 3 || (start.elapsed().as_secs_f64() < budget_s && samples.len() < 50)
        {
            for _ in 0..per_batch {
                record()?;
            }
            samples.push(self.gpu.sync_timed()? / per_batch as f64);
        }
        samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let t = samples[samples.len() / 2];
        println!(
            "{:<44} {:>10.3} {:>10.2} {:>10.2}",
            name,
            t * 1e3,
            flops / t * 1e-9,
            bytes / t * 1e-9
        );
        Ok(Some(t))
    }
}
