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
            "{:<72} {:>10} {:>10} {:>10}",
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
        let n = self.batch_len(&mut record)?;
        let mut ts = vec![];
        let start = std::time::Instant::now();
        while more_rounds(ts.len(), 3, start, budget_s) {
            ts.push(self.batch(&mut record, n)?);
        }
        let t = median(&mut ts);
        row(name, t, flops, bytes);
        Ok(Some(t))
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
        let n = self.batch_len(&mut record)?;
        let n_ref = self.batch_len(record_ref)?;
        let (mut ts, mut ts_ref, mut ratios) = (vec![], vec![], vec![]);
        let start = std::time::Instant::now();
        while more_rounds(ts.len(), 5, start, budget_s) {
            let t = self.batch(&mut record, n)?;
            let t_ref = self.batch(record_ref, n_ref)?;
            ts.push(t);
            ts_ref.push(t_ref);
            ratios.push((flops / t) / (ref_flops / t_ref));
        }
        row(name, median(&mut ts), flops, bytes);
        row(ref_name, median(&mut ts_ref), ref_flops, 0.0);
        println!("  ratio to the reference: {:.2}", median(&mut ratios));
        Ok(())
    }

    /// Seconds per launch over a batch of `n` launches, submitted and waited for.
    fn batch(&self, record: &mut dyn FnMut() -> Result<()>, n: usize) -> Result<f64> {
        for _ in 0..n {
            record()?;
        }
        Ok(self.gpu.sync_timed()? / n as f64)
    }

    /// Launches per batch for batches of ~50 ms, from one warm-up launch.
    fn batch_len(&self, record: &mut dyn FnMut() -> Result<()>) -> Result<usize> {
        let warm = self.batch(record, 1)?;
        Ok(((0.05 / warm.max(1e-6)) as usize).clamp(1, 32))
    }
}

/// Whether to time another round: at least `min` rounds, then until the budget or 50 rounds.
fn more_rounds(done: usize, min: usize, start: std::time::Instant, budget_s: f64) -> bool {
    done < min || (start.elapsed().as_secs_f64() < budget_s && done < 50)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One table row: time per launch, GFLOP/s and GB/s.
fn row(name: &str, t: f64, flops: f64, bytes: f64) {
    println!(
        "{:<72} {:>10.3} {:>10.2} {:>10.2}",
        name,
        t * 1e3,
        flops / t * 1e-9,
        bytes / t * 1e-9
    );
}
