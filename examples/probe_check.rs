//! Checks the linear probe against an independent solver: writes the embedded split's raw pixels
//! and a random encoder's frozen features to `DIR` (little-endian f32 rows, u8 labels) with this
//! crate's probe accuracy beside them; `python3 scripts/probe_sklearn.py DIR` fits scikit-learn's
//! `LogisticRegression` on the same files.
//!
//! `cargo run --release --example probe_check -- DIR`

use contrastive::data::{self, GpuImages};
use contrastive::eval::{self, FeatureSet};
use contrastive::methods::Network;
use contrastive::nn::EncoderConfig;
use contrastive::{Arena, Gpu, Result};

fn main() -> Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or("probe-check".into()));
    std::fs::create_dir_all(&dir).map_err(|e| contrastive::Error::io(&dir, e))?;
    let gpu = Gpu::new()?;
    let split = data::embedded()?;
    let mut arena = Arena::for_gpu("data", &gpu);
    let train = GpuImages::upload(&gpu, &mut arena, &split.train)?;
    let test = GpuImages::upload(&gpu, &mut arena, &split.test)?;
    let (tl, ql) = (&split.train.labels, &split.test.labels);
    let net = Network::new(&gpu, &EncoderConfig::small(28, 28, 1), &[], 0)?;
    let f = |g: &mut contrastive::autodiff::Graph, x| net.features(g, x);
    let sets: [(&str, FeatureSet, FeatureSet); 2] = [
        (
            "pixels",
            eval::pixels(&gpu, &train, tl)?,
            eval::pixels(&gpu, &test, ql)?,
        ),
        (
            "random",
            eval::features(&gpu, &f, &train, tl)?,
            eval::features(&gpu, &f, &test, ql)?,
        ),
    ];
    for (name, tr, te) in &sets {
        let t = std::time::Instant::now();
        let r = contrastive::probe::linear_probe(tr.rows(), te.rows())?;
        println!(
            "{name}: {} features, accuracy {:.2} %, lambda {:e}, {} iterations, {:.1} s",
            tr.dim,
            r.accuracy * 100.0,
            r.lambda,
            r.iterations,
            t.elapsed().as_secs_f64()
        );
        for (part, set) in [("train", tr), ("test", te)] {
            let path = dir.join(format!("{name}-{part}"));
            std::fs::write(path.with_extension("f32"), bytemuck::cast_slice(&set.data))
                .and_then(|_| std::fs::write(path.with_extension("u8"), &set.labels))
                .map_err(|e| contrastive::Error::io(&path, e))?;
        }
    }
    Ok(())
}
