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
        record: impl FnMut() -> Result<()>,
    ) -> Result<Option<f64>> {
        if !self.wants(name) {
            return Ok(None);
        }
        self.run_always(name, flops, bytes, budget_s, record)
            .map(Some)
    }

    /// [`Bench::run`] whatever the filter says.
    fn run_always(
        &mut self,
        name: &str,
        flops: f64,
        bytes: f64,
        budget_s: f64,
        mut record: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
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
        Ok(t)
    }

    /// Times `record` like [`Bench::run`], alternating its batches with batches of a reference
    /// kernel `reference` (name, FLOPs, recorder) so that both see the same load on a shared
    /// machine. Prints both and the median over rounds of the ratio of their GFLOP/s.
    pub fn compare(
        &mut self,
        name: &str,
        flops: f64,
        bytes: f64,
        budget_s: f64,
        mut record: impl FnMut() -> Result<()>,
        reference: (&str, f64, &mut dyn FnMut() -> Result<()>),
    ) -> Result<()> {
        if !self.wants(name) {
            return Ok(());
        }
        let (ref_name, ref_flops, record_ref) = reference;
        let batch = |f: &mut dyn FnMut() -> Result<()>, n: usize| -> Result<f64> {
            for _ in 0..n {
                f()?;
            }
            Ok(self.gpu.sync_timed()? / n as f64)
        };
        let n = ((0.05 / batch(&mut record, 1)?.max(1e-6)) as usize).clamp(1, 32);
        let n_ref = ((0.05 / batch(record_ref, 1)?.max(1e-6)) as usize).clamp(1, 32);
        let (mut ts, mut ts_ref, mut ratios) = (vec![], vec![], vec![]);
        let start = std::time::Instant::now();
        while ts.len() < 5 || (start.elapsed().as_secs_f64() < budget_s && ts.len() < 50) {
            let t = batch(&mut record, n)?;
            let t_ref = batch(record_ref, n_ref)?;
            ts.push(t);
            ts_ref.push(t_ref);
            ratios.push((flops / t) / (ref_flops / t_ref));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let (t, t_ref) = (median(&mut ts), median(&mut ts_ref));
        for (label, t, f, b) in [(name, t, flops, bytes), (ref_name, t_ref, ref_flops, 0.0)] {
            println!(
                "{:<44} {:>10.3} {:>10.2} {:>10.2}",
                label,
                t * 1e3,
                f / t * 1e-9,
                b / t * 1e-9
            );
        }
        println!("  ratio to the reference: {:.2}", median(&mut ratios));
        Ok(())
    }
}
