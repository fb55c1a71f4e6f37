//! The non-finite guard: its kernels against the CPU reference, the optimiser skipping a flagged
//! update, every method's skipped step changing no state bit for bit, and training runs that hit
//! a NaN — in a parameter, or only in a gradient — stop with the step and the op that produced it,
//! change no state and leave the last checkpoint intact.

mod common;

use std::sync::atomic::AtomicBool;

use common::*;
use contrastive::autodiff::{Graph, Var};
use contrastive::checkpoint::{self, Checkpoint};
use contrastive::data::{self, Augment, GpuImages};
use contrastive::gpu::Region;
use contrastive::kernels::cpc::PatchGrid;
use contrastive::kernels::guard::{self, When};
use contrastive::kernels::optim::{self, Optimizer};
use contrastive::memory::Tensor;
use contrastive::methods::{
    augmented_views, Cmc, CmcConfig, Cpc, CpcConfig, CpcInput, Dim, DimConfig, Examples, Loss,
    Method, Moco, MocoConfig, StepInput,
};
use contrastive::nn::{Store, StoreBuilder};
use contrastive::optim::Optim;
use contrastive::train::{self, record_step, rewind, Checkpointing, TrainConfig};
use contrastive::{Arena, Error, Gpu, Result};
use rand::SeedableRng;

const BATCH: usize = 8;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn check_finite_matches_the_reference_on_awkward_lengths_and_offsets() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let flags = arena.tensor(&gpu, [4]).unwrap().region;
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_0001), // another NaN payload
        f32::from_bits(0xff80_0001), // a negative signalling NaN
    ];
    let finite = [
        f32::MAX,
        f32::MIN,
        -0.0,
        f32::from_bits(1),
        f32::MIN_POSITIVE,
    ];
    for n in [1usize, 3, 17, 31, 64, 129, 5000] {
        let base = rand_vec(n + 7, n as u64);
        let t = arena.upload(&gpu, [n + 7], &base).unwrap();
        // Unaligned starts: the launcher widens the binding down to the alignment.
        for start in [0usize, 1, 5] {
            let r = t.region.slice(start, n);
            for (case, poison) in [None, Some((0, specials[0])), Some((n - 1, specials[1]))]
                .into_iter()
                .chain((0..5).map(|k| Some(((k * 7919) % n, specials[k]))))
                .chain((0..5).map(|k| Some(((k * 31) % n, finite[k]))))
                .enumerate()
            {
                let mut data = base.clone();
                if let Some((i, v)) = poison {
                    data[start + i] = v;
                }
                gpu.upload(t.region, &data).unwrap();
                gpu.upload(flags, &[0u32, 0, 0, 0]).unwrap();
                guard::check_finite(&gpu, r, flags, 2, false).unwrap();
                let got: Vec<u32> = gpu.read(flags).unwrap();
                let want = guard::reference_non_finite(&bits(&data[start..start + n]));
                assert_eq!(
                    got,
                    vec![0, 0, want as u32, 0],
                    "n {n} start {start} case {case}"
                );
            }
        }
    }
    // A forced check raises the flag on finite data; a finite check never lowers it.
    let t = arena.upload(&gpu, [3], &[1.0, 2.0, 3.0]).unwrap();
    gpu.upload(flags, &[0u32, 0, 0, 0]).unwrap();
    guard::check_finite(&gpu, t.region, flags, 0, true).unwrap();
    guard::check_finite(&gpu, t.region, flags, 0, false).unwrap();
    assert_eq!(gpu.read::<u32>(flags).unwrap(), vec![1, 0, 0, 0]);
    assert!(guard::check_finite(&gpu, t.region, flags, 4, false).is_err());
}

#[test]
fn copy_if_copies_only_in_the_wanted_state() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let flag = arena.tensor(&gpu, [1]).unwrap().region;
    for n in [1usize, 17, 129, 3000] {
        let src = arena.upload(&gpu, [n + 3], &rand_vec(n + 3, 1)).unwrap();
        let dst = arena.upload(&gpu, [n + 5], &rand_vec(n + 5, 2)).unwrap();
        for (raised, when) in [
            (0u32, When::Finite),
            (1, When::Finite),
            (0, When::NonFinite),
            (1, When::NonFinite),
        ] {
            let d0 = rand_vec(n + 5, 3 + n as u64);
            gpu.upload(dst.region, &d0).unwrap();
            gpu.upload(flag, &[raised]).unwrap();
            let (s, d) = (src.region.slice(3, n), dst.region.slice(1, n));
            guard::copy_if(&gpu, s, d, flag, when).unwrap();
            let got: Vec<f32> = gpu.read(dst.region).unwrap();
            let copies = (raised != 0) == (when == When::NonFinite);
            let mut want = d0.clone();
            if copies {
                let sv: Vec<f32> = gpu.read(src.region).unwrap();
                want[1..1 + n].copy_from_slice(&sv[3..3 + n]);
            }
            assert_eq!(bits(&got), bits(&want), "n {n} flag {raised} {when:?}");
        }
    }
}

#[test]
fn a_raised_flag_leaves_parameters_and_optimiser_state_bit_identical() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let n = 131;
    let sgd = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: true,
    };
    let adam = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        decoupled: true,
    };
    for opt in [sgd, adam] {
        let p0 = rand_vec(n, 1);
        let params = arena.upload(&gpu, [n], &p0).unwrap().region;
        let mut g = rand_vec(n, 2);
        g[7] = f32::NAN;
        let grads = arena.upload(&gpu, [n], &g).unwrap().region;
        let s1 = arena.upload(&gpu, [n], &rand_vec(n, 3)).unwrap().region;
        let s2 = arena.upload(&gpu, [n], &rand_vec(n, 4)).unwrap().region;
        let mask = arena.upload(&gpu, [n], &vec![1.0; n]).unwrap().region;
        let flag = arena.tensor(&gpu, [1]).unwrap().region;
        let read = |r| gpu.read::<u32>(r).unwrap();
        let step = || {
            optim::step(
                &gpu,
                &opt,
                params,
                grads,
                s1,
                s2,
                mask,
                0.1,
                0.01,
                2,
                Some(flag),
            )
            .unwrap()
        };
        let before = (read(params), read(s1), read(s2));
        guard::check_finite(&gpu, grads, flag, 0, false).unwrap();
        step();
        assert_eq!(
            read(flag),
            vec![1],
            "{opt:?}: the NaN gradient raised the flag"
        );
        assert_eq!((read(params), read(s1), read(s2)), before, "{opt:?}");
        // The same update with a finite gradient and the flag down runs.
        gpu.upload(grads, &rand_vec(n, 2)).unwrap();
        gpu.upload(flag, &[0u32]).unwrap();
        step();
        assert_ne!(read(params), before.0, "{opt:?}: a finite step updates");
    }
}

struct Setup {
    images: GpuImages,
    _arena: Arena,
}

fn setup(gpu: &Gpu) -> Setup {
    let train = data::embedded().unwrap().train.take(64);
    let mut arena = Arena::for_gpu("data", gpu);
    let images = GpuImages::upload(gpu, &mut arena, &train).unwrap();
    Setup {
        images,
        _arena: arena,
    }
}

fn run(
    gpu: &Gpu,
    s: &Setup,
    method: &mut dyn Method,
    steps: u64,
    ckpt: Option<&Checkpointing>,
    resume: Option<&Checkpoint>,
) -> Result<train::Outcome> {
    let cfg = TrainConfig {
        batch_size: BATCH,
        steps,
        seed: 5,
        augment: Augment::contrastive(),
        knn_every: 0,
        monitor_images: 0,
        progress: false,
    };
    let stop = AtomicBool::new(false);
    train::train(
        gpu,
        method,
        Examples::Images(&s.images),
        None,
        &cfg,
        ckpt,
        resume,
        &stop,
        |_| Ok(()),
    )
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("contrastive-guard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every tensor and metadata entry `method.save` writes, as bits.
fn state(gpu: &Gpu, method: &dyn Method) -> Vec<(String, Vec<u32>)> {
    let mut ck = Checkpoint::new();
    method.save(gpu, &mut ck).unwrap();
    let mut out: Vec<(String, Vec<u32>)> = ck
        .names()
        .map(|name| {
            let shape = ck.shape(name).unwrap().to_vec();
            (name.to_string(), bits(&ck.get_f32(name, &shape).unwrap()))
        })
        .collect();
    out.extend(ck.meta.iter().map(|(k, v)| (format!("{k}={v}"), vec![])));
    out
}

/// Trains 2 steps with checkpoints, resumes from a copy of the last one with a NaN in `tensor`
/// and expects step 3 to fail: returns the error's op; checks that the method's whole state is
/// the poisoned checkpoint's, bit for bit, and that the checkpoint files are untouched.
fn poisoned_resume(gpu: &Gpu, method: &mut dyn Method, tensor: &str, name: &str) -> String {
    let s = setup(gpu);
    let dir = tmp(name);
    let ckpt = Checkpointing {
        dir: dir.clone(),
        every: 1,
        keep: 5,
        base: Default::default(),
    };
    run(gpu, &s, method, 2, Some(&ckpt), None).unwrap();
    let files = checkpoint::list(&dir);
    assert_eq!(files.len(), 2);
    let on_disk: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let mut ck = Checkpoint::read(files.last().unwrap()).unwrap();
    let shape = ck.shape(tensor).unwrap().to_vec();
    let mut w = ck.get_f32(tensor, &shape).unwrap();
    w[1] = f32::NAN;
    ck.put_f32(tensor, &shape, w);
    method.load(gpu, &ck).unwrap();
    let loaded = state(gpu, method);

    let err = run(gpu, &s, method, 4, Some(&ckpt), Some(&ck))
        .err()
        .expect("a NaN parameter stops training");
    let Error::NonFinite {
        step,
        op,
        checkpoint,
        ..
    } = &err
    else {
        panic!("expected a non-finite error, got {err}");
    };
    assert_eq!(*step, 3, "{err}");
    assert_eq!(checkpoint.as_ref(), files.last(), "{err}");
    assert!(err.to_string().contains("intact"), "{err}");
    // Nothing the step touched changed: parameters, key network, BatchNorm statistics, optimiser
    // state and step count, queue and its pointer.
    let after = state(gpu, method);
    assert_eq!(after.len(), loaded.len());
    for (a, b) in after.iter().zip(&loaded) {
        assert_eq!(a, b, "{} changed in a skipped step", a.0);
    }
    assert_eq!(checkpoint::list(&dir), files, "no checkpoint written");
    for (f, bytes) in files.iter().zip(&on_disk) {
        assert_eq!(&std::fs::read(f).unwrap(), bytes, "{} intact", f.display());
    }
    op.clone()
}

#[test]
fn a_nan_parameter_stops_moco_at_its_step_names_it_and_changes_nothing() {
    let gpu = gpu();
    let config = MocoConfig {
        queue: 20,
        dim: 8,
        split_bn: 2,
        ..MocoConfig::default()
    };
    let mut moco = Moco::new(&gpu, config, &tiny_encoder(), BATCH, &sgd(0.05), 3).unwrap();
    let tensor = "query.encoder.stage1.down.conv.weight";
    let op = poisoned_resume(&gpu, &mut moco, tensor, "moco");
    eprintln!("{op}");
    // The EMA of the key network is the first command to read the query parameters.
    assert!(
        op.contains("read by EMA of the key network (ema.wgsl::ema")
            && op.contains("parameters `encoder.stage1.down.conv.weight`")
            && op.contains("before the step"),
        "{op}"
    );
}

#[test]
fn a_nan_batchnorm_scale_stops_deep_infomax_at_the_batch_norm_that_reads_it() {
    let gpu = gpu();
    let config = DimConfig {
        dim: 8,
        ..DimConfig::default()
    };
    let mut dim = Dim::new(&gpu, config, &tiny_encoder(), &sgd(0.05), 3).unwrap();
    let tensor = "query.encoder.stage1.down.bn.weight";
    let op = poisoned_resume(&gpu, &mut dim, tensor, "dim");
    eprintln!("{op}");
    assert!(
        op.contains("read by batch_norm forward")
            && op.contains("parameters `encoder.stage1.down.bn.weight`"),
        "{op}"
    );
}

/// A model whose loss is finite while its gradient is not: `mean(1e30 · normalize(x·wᵀ))` with
/// w = 0. Forward, every row is zero, so the normalised rows (x / max(‖x‖, 1e-12)) and the loss
/// are 0; backward, the gradient through the normalisation is dout / 1e-12 = inf.
struct ZeroNorm {
    params: Store,
    w: contrastive::nn::Linear,
    optim: Optim,
}

impl ZeroNorm {
    fn new(gpu: &Gpu) -> ZeroNorm {
        let mut p = StoreBuilder::new(0);
        let w = contrastive::nn::Linear::new(&mut p, "proj", 28 * 28, 4, false);
        let params = p.build(gpu, "parameters", true).unwrap();
        let n = params.values.len;
        gpu.upload(params.values, &vec![0.0f32; n]).unwrap();
        let optim = Optim::new(gpu, &params, &sgd(0.05)).unwrap();
        ZeroNorm { params, w, optim }
    }
}

impl Method for ZeroNorm {
    fn name(&self) -> &'static str {
        "zero-norm"
    }

    fn inputs(&mut self, input: &mut StepInput<'_>) -> Result<Vec<Tensor>> {
        augmented_views(input, 1, false)
    }

    fn trained(&mut self) -> Vec<(&Store, &mut Optim)> {
        vec![(&self.params, &mut self.optim)]
    }

    fn rollback(&self) -> Vec<Region> {
        vec![]
    }

    fn loss(&mut self, g: &mut Graph, inputs: &[Tensor]) -> Result<Loss> {
        let n = inputs[0].shape.dim(0);
        let x = g.input(inputs[0].reshape([n, 28 * 28]));
        let z = self.w.forward(g, &self.params, x, false)?;
        let z = g.l2_normalize(z)?;
        let z = g.scale(z, 1e30)?;
        Ok(Loss {
            value: g.mean(z)?,
            accuracy: None,
            extra: None,
        })
    }

    fn features(&self, _: &mut Graph, x: Var) -> Result<Var> {
        Ok(x)
    }

    fn parameter_count(&self) -> usize {
        self.params.count()
    }

    fn save(&self, gpu: &Gpu, ck: &mut Checkpoint) -> Result<()> {
        ck.put_store(gpu, "query", &self.params)?;
        self.optim.save(gpu, ck, "optim")
    }

    fn load(&mut self, gpu: &Gpu, ck: &Checkpoint) -> Result<()> {
        ck.get_store(gpu, "query", &self.params)?;
        self.optim.load(gpu, ck, "optim")
    }
}

#[test]
fn a_non_finite_gradient_with_a_finite_loss_is_caught_and_named() {
    let gpu = gpu();
    let s = setup(&gpu);
    let mut m = ZeroNorm::new(&gpu);
    // One step by hand: the loss is finite, the guard is raised by the gradient alone.
    let mut arena = Arena::for_gpu("step", &gpu);
    let before = state(&gpu, &m);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let idx: Vec<u32> = (0..BATCH as u32).collect();
    let out = record_step(
        &mut m,
        StepInput {
            gpu: &gpu,
            arena: &mut arena,
            examples: Examples::Images(&s.images),
            indices: &idx,
            augment: &Augment::contrastive(),
            rng: &mut rng,
            step: 1,
            dry_run: false,
        },
    )
    .unwrap();
    let stats: Vec<f32> = gpu.read(out.stats.region).unwrap();
    assert_eq!(stats[0], 0.0, "the loss is finite");
    assert_ne!(stats[2].to_bits(), 0, "the gradient raised the guard");
    let grads: Vec<f32> = gpu.read(m.params.grads.unwrap()).unwrap();
    assert!(grads.iter().any(|g| !g.is_finite()));
    rewind(&mut m);
    assert_eq!(state(&gpu, &m), before, "the update was skipped");

    // Through the trainer: stopped at step 1 by the op whose backward made the infinity.
    let err = run(&gpu, &s, &mut m, 3, None, None).err().expect("stops");
    let Error::NonFinite { step, op, .. } = &err else {
        panic!("expected a non-finite error, got {err}");
    };
    eprintln!("{err}");
    assert_eq!(*step, 1);
    assert!(
        op.starts_with("first non-finite value written by l2_normalize backward"),
        "{op}"
    );
    assert!(err.to_string().contains("no checkpoint"), "{err}");
    assert_eq!(
        state(&gpu, &m),
        before,
        "the trainer's step was skipped too"
    );
}

/// Every method as the guard must protect it: MoCo (EMA key network, queue, split BatchNorm), DIM,
/// CMC with a memory bank, CPC on image patches (BatchNorm in the patch encoder).
fn every_method(gpu: &Gpu) -> Vec<Box<dyn Method>> {
    let enc = tiny_encoder();
    let moco = MocoConfig {
        queue: 20,
        dim: 8,
        split_bn: 2,
        symmetric: true,
        ..MocoConfig::default()
    };
    let dim = DimConfig {
        dim: 8,
        ..DimConfig::default()
    };
    let cmc = CmcConfig {
        dim: 8,
        bank: 12,
        ..CmcConfig::default()
    };
    let cpc = CpcConfig {
        input: CpcInput::Patches {
            grid: PatchGrid { size: 8, stride: 4 },
            encoder: enc.clone(),
        },
        offsets: 2,
        dim: 8,
        context: 8,
        window: 0,
        negatives: Default::default(),
    };
    vec![
        Box::new(Moco::new(gpu, moco, &enc, BATCH, &sgd(0.05), 3).unwrap()),
        Box::new(Dim::new(gpu, dim, &enc, &sgd(0.05), 3).unwrap()),
        Box::new(Cmc::new(gpu, cmc, &enc, BATCH, &sgd(0.05), 3).unwrap()),
        Box::new(Cpc::new(gpu, cpc, BATCH, &sgd(0.05), 3).unwrap()),
    ]
}

/// Everything a step may change, as bits: what `save` writes (parameters, optimiser state and step
/// counts, queue or bank and its pointer, EMA key network, BatchNorm statistics), and every region
/// the method names as trained or as rolled back, read directly.
fn all_state(gpu: &Gpu, method: &mut dyn Method) -> Vec<(String, Vec<u32>)> {
    let mut out = state(gpu, method);
    for (i, r) in method.rollback().into_iter().enumerate() {
        out.push((format!("rollback region {i}"), gpu.read(r).unwrap()));
    }
    let values: Vec<Region> = method.trained().iter().map(|(s, _)| s.values).collect();
    for (i, r) in values.into_iter().enumerate() {
        out.push((format!("trained store {i}"), gpu.read(r).unwrap()));
    }
    out
}

/// Records and runs one step of `method`; returns its guard word.
fn one_step(
    gpu: &Gpu,
    s: &Setup,
    method: &mut dyn Method,
    arena: &mut Arena,
    n: u64,
    dry_run: bool,
) -> u32 {
    let idx: Vec<u32> = (0..BATCH as u32)
        .map(|i| (i * 5 + n as u32 * 3) % 64)
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n);
    let out = record_step(
        method,
        StepInput {
            gpu,
            arena,
            examples: Examples::Images(&s.images),
            indices: &idx,
            augment: &Augment::contrastive(),
            rng: &mut rng,
            step: n,
            dry_run,
        },
    )
    .unwrap();
    let stats: Vec<f32> = gpu.read(out.stats.region).unwrap();
    stats[2].to_bits()
}

/// Runs step 3 of `method`, expects its guard raised (`dry_run`, or a non-finite value), rewinds
/// it and checks that every state region is as before, bit for bit; returns that state.
fn skipped_step(
    gpu: &Gpu,
    s: &Setup,
    method: &mut dyn Method,
    arena: &mut Arena,
    case: &str,
    dry_run: bool,
) -> Vec<(String, Vec<u32>)> {
    let name = method.name();
    let before = all_state(gpu, method);
    let flag = one_step(gpu, s, method, arena, 3, dry_run);
    assert_ne!(flag, 0, "{name} {case}: the guard is raised");
    rewind(method);
    let after = all_state(gpu, method);
    assert_eq!(after.len(), before.len(), "{name} {case}");
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.0, b.0, "{name} {case}");
        assert!(
            a.1 == b.1,
            "{name} {case}: {} changed in a skipped step",
            a.0
        );
    }
    before
}

/// For every method, a step whose guard is raised — by a dry run, or by a NaN in a parameter,
/// which also reaches the BatchNorm statistics, the EMA and the keys — leaves every state region
/// bit-identical once the trainer has rewound it; a finite step after it does train.
#[test]
fn a_skipped_step_changes_no_state_bit_for_bit_in_every_method() {
    let gpu = gpu();
    let s = setup(&gpu);
    let mut arena = Arena::for_gpu("step", &gpu);
    for mut method in every_method(&gpu) {
        let m = method.as_mut();
        let name = m.name();
        for n in 1..=2 {
            assert_eq!(
                one_step(&gpu, &s, m, &mut arena, n, false),
                0,
                "{name} step {n}"
            );
        }

        let before = skipped_step(&gpu, &s, m, &mut arena, "dry run", true);
        let first = m.trained()[0].0.values.slice(0, 1);
        let kept: Vec<f32> = gpu.read(first).unwrap();
        gpu.upload(first, &[f32::NAN]).unwrap();
        skipped_step(&gpu, &s, m, &mut arena, "NaN parameter", false);
        gpu.upload(first, &kept).unwrap();
        assert_eq!(
            one_step(&gpu, &s, m, &mut arena, 3, false),
            0,
            "{name} step 3"
        );
        let trained = all_state(&gpu, m);
        assert!(
            trained
                .iter()
                .zip(&before)
                .any(|(a, b)| a.0.starts_with("trained") && a.1 != b.1),
            "{name}: a finite step trains"
        );
    }
}
