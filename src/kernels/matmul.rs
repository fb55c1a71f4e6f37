//! Matrix multiply (`shaders/matmul.wgsl`): `c = epilogue(alpha · op(a) · op(b))` with either
//! operand transposed, a bias + ReLU epilogue, or accumulation into `c`.
//!
//! Every product can run on any of an explicit list of [`Candidate`]s ([`candidates`]); [`pick`]
//! is the one function that picks among them (the tuned choice, else the heuristic [`choose`]),
//! [`matmul`] runs its pick and [`time`] measures them all for tuning. A candidate is a
//! [`Tiling`] and a number of K splits:
//! - [`Tiling::Registers`], for CPU adapters (llvmpipe), where workgroup barriers are very
//!   expensive and every storage load costs a per-lane loop: each invocation owns a 32×32 tile of
//!   `c` and streams vec4s of `a` and `b` straight from storage; shapes that cannot be read as
//!   vec4s use a 16×16 scalar-load version;
//! - [`Tiling::Block`], for GPUs: one parameterised WGSL kernel (block tile per workgroup, results
//!   per invocation, K slice), built per tiling by rewriting the shader's parameter block;
//!   double-buffered K slices in workgroup memory, vec4 loads where the leading dimensions allow.
//!
//! A product with few output tiles and a long K (a weight gradient summed over a batch of
//! locations) splits K across workgroups when the caller gives scratch for the partial products
//! ([`split_k_scratch_for`]); the reduction kernel then adds them up. Without the split such a
//! product runs on a handful of workgroups while the rest of the GPU idles.

use std::sync::LazyLock;

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::gpu::tune::{time_candidates, Budget, Trial};
use crate::gpu::{AdapterKind, Gpu, Kernel, Region};
use crate::kernel;
use crate::kernels::reduce::{self, Axis, Reduce};
use crate::memory::{Arena, Tensor};

const TILE4: Kernel = kernel!("matmul.wgsl", "tile4", 4);
const TILE1: Kernel = kernel!("matmul.wgsl", "tile1", 4);
const SMEM: Kernel = kernel!("matmul.wgsl", "smem", 4);
/// Side of the `smem` kernel's square tile of `c` per workgroup.
const SMEM_TILE: usize = 64;
const SOURCE: &str = TILE4.source;
/// The line that ends the shader's block parameters; the launcher replaces everything above it.
const PARAMS_END: &str = "// end of block parameters\n";

/// Side of the square tile of `c` per invocation in the register-tile kernels (they must match
/// the WGSL constants).
const TILE4_SIDE: usize = 32;
const TILE1_SIDE: usize = 16;
/// Invocations per workgroup in the register-tile kernels: one SIMD vector on llvmpipe.
const LANES: usize = 8;
/// Split-K: split K until about this many workgroups run, in slices of at least SPLIT_MIN_K,
/// each a multiple of SPLIT_ALIGN (a multiple of every block tiling's K slice).
const SPLIT_WORKGROUPS: usize = 256;
const SPLIT_MIN_K: usize = 256;
const SPLIT_ALIGN: usize = 16;

/// Which operand is transposed. (The discriminants are the kernels' mode codes.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trans {
    /// `a [M,K] · b [K,N]`
    NN = 0,
    /// `a [M,K] · b [N,K]ᵀ`
    NT,
    /// `a [K,M]ᵀ · b [K,N]`
    TN,
}

/// What to compute; see [`matmul`].
#[derive(Clone, Copy, Debug)]
pub struct Matmul<'a> {
    pub trans: Trans,
    pub alpha: f32,
    /// Added to every row of the product (N elements).
    pub bias: Option<&'a Tensor>,
    /// ReLU after the bias.
    pub relu: bool,
    /// `c += alpha · op(a) · op(b)` instead of `c = ...`; excludes `bias` and `relu`.
    pub accumulate: bool,
    /// Room for the partial products of a split K loop ([`split_k_scratch_for`] floats). Without
    /// it, or with a bias or ReLU epilogue, K is not split.
    pub scratch: Option<&'a Tensor>,
}

impl Default for Matmul<'_> {
    fn default() -> Self {
        Matmul {
            trans: Trans::NN,
            alpha: 1.0,
            bias: None,
            relu: false,
            accumulate: false,
            scratch: None,
        }
    }
}

/// The size of a product `op(a) [m,k] · op(b) [k,n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl Dims {
    /// The dims of `op(a) · op(b)` as laid out for `trans` (not checked: [`matmul`] reports
    /// operands that do not multiply).
    pub fn of(a: &Tensor, b: &Tensor, trans: Trans) -> Dims {
        let ((ar, ac), (br, bc)) = (a.shape.rows_cols(), b.shape.rows_cols());
        let (m, k, n) = match trans {
            Trans::NN => (ar, ac, bc),
            Trans::NT => (ar, ac, br),
            Trans::TN => (ac, ar, bc),
        };
        Dims { m, n, k }
    }

    /// Whether every leading dimension (of a, b and c) is a multiple of 4, so that rows can be
    /// read and written as vec4s.
    fn vec4(&self, trans: Trans) -> bool {
        let (lda, ldb) = match trans {
            Trans::NN => (self.k, self.n),
            Trans::NT => (self.k, self.k),
            Trans::TN => (self.m, self.n),
        };
        lda.is_multiple_of(4) && ldb.is_multiple_of(4) && self.n.is_multiple_of(4)
    }
}

/// A block tiling of the GPU kernel: a `bm×bn` tile of `c` per workgroup, `tm×tn` per invocation,
/// K in slices of `bk` (all multiples of 4; each invocation stages whole vec4s of each slice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub tm: usize,
    pub tn: usize,
}

impl Block {
    const fn new(bm: usize, bn: usize, bk: usize, tm: usize, tn: usize) -> Block {
        let b = Block { bm, bn, bk, tm, tn };
        let threads = b.threads();
        assert!(tm.is_multiple_of(4) && tn.is_multiple_of(4) && bk.is_multiple_of(4));
        assert!(SPLIT_ALIGN.is_multiple_of(bk));
        assert!(bm.is_multiple_of(tm) && bn.is_multiple_of(tn));
        assert!((bm * bk).is_multiple_of(4 * threads) && (bn * bk).is_multiple_of(4 * threads));
        b
    }

    const fn threads(&self) -> usize {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Bytes of workgroup memory: two slices of each operand, each row padded by one vec4.
    fn workgroup_bytes(&self) -> usize {
        2 * self.bk * (self.bm + 4 + self.bn + 4) * 4
    }

    fn fits(&self, gpu: &Gpu) -> bool {
        let l = &gpu.limits;
        self.workgroup_bytes() <= l.max_compute_workgroup_storage_size as usize
            && self.threads() <= l.max_compute_invocations_per_workgroup as usize
            && self.threads() <= l.max_compute_workgroup_size_x as usize
    }

    /// The shader's parameter block for this tiling: its constants, and the per-invocation
    /// registers written out one field per vec4 with the code that touches them, so that every
    /// index is a constant. GPU compilers keep such values in registers; an array indexed by a loop
    /// variable (naga does not unroll loops) lives in local memory, several times slower.
    pub fn params(&self) -> String {
        let Block { bm, bn, bk, tm, tn } = *self;
        let (ga, gb) = (tm / 4, tn / 4);
        let (la, lb) = (
            bm * bk / (4 * self.threads()),
            bn * bk / (4 * self.threads()),
        );
        let list = |n: usize, f: &dyn Fn(usize) -> String| -> String {
            (0..n).map(f).collect::<Vec<_>>().join(", ")
        };
        let lines = |n: usize, f: &dyn Fn(usize) -> String| -> String {
            (0..n).map(|i| format!("    {};\n", f(i))).collect()
        };
        let acc = |i: usize, h: usize| format!("c{i}_{h}");
        let lane = |i: usize| ["x", "y", "z", "w"][i % 4];
        let fields = list(tm * gb, &|j| format!("{}: vec4<f32>", acc(j / gb, j % gb)));
        let stash = list(la + lb, &|j| {
            if j < la {
                format!("a{j}: vec4<f32>")
            } else {
                format!("b{}: vec4<f32>", j - la)
            }
        });
        let loads = lines(ga, &|g| {
            format!("let a{g} = sa[base_a + {}u]", g * (bm / tm))
        }) + &lines(gb, &|h| {
            format!("let b{h} = sb[base_b + {}u]", h * (bn / tn))
        });
        let fmas = lines(tm * gb, &|j| {
            let (i, h) = (j / gb, j % gb);
            let c = acc(i, h);
            format!("r.{c} = fma(vec4(a{}.{}), b{h}, r.{c})", i / 4, lane(i))
        });
        let fetches = list(la + lb, &|j| {
            let (o, s) = if j < la { ("oa", j) } else { ("ob", j - la) };
            format!("fetch({o}, tid + {s}u * THREADS, k0, kend)")
        });
        let stages = lines(la + lb, &|j| {
            let (o, s, f) = if j < la {
                ("oa", j, format!("a{j}"))
            } else {
                ("ob", j - la, format!("b{}", j - la))
            };
            format!("stage({o}, half, tid + {s}u * THREADS, s.{f})")
        });
        let stores = lines(tm * gb, &|j| {
            let (i, h) = (j / gb, j % gb);
            format!(
                "store_block(row0 + {}u, col0 + {}u, r.{})",
                (i / 4) * (4 * bm / tm) + i % 4,
                h * (4 * bn / tn),
                acc(i, h)
            )
        });
        format!(
            "const BM: u32 = {bm}u;\nconst BN: u32 = {bn}u;\nconst BK: u32 = {bk}u;\n\
             const TM: u32 = {tm}u;\nconst TN: u32 = {tn}u;\n\
             struct Acc {{ {fields} }}\n\
             struct Stash {{ {stash} }}\n\
             fn block_mac(acc: Acc, base_a: u32, base_b: u32) -> Acc {{\n{loads}    var r = acc;\n{fmas}    return r;\n}}\n\
             fn fetch_all(oa: Operand, ob: Operand, tid: u32, k0: u32, kend: u32) -> Stash {{\n\
             \x20   return Stash({fetches});\n}}\n\
             fn stage_all(oa: Operand, ob: Operand, half: u32, tid: u32, s: Stash) {{\n{stages}}}\n\
             fn store_all(r: Acc, row0: u32, col0: u32) {{\n{stores}}}\n"
        )
    }
}

/// The block tilings offered on every adapter whose limits they fit: large tiles with 8×8
/// results per invocation for large products, smaller ones for fewer, smaller output tiles.
pub const BLOCKS: [Block; 3] = [
    Block::new(128, 128, 8, 8, 8),
    Block::new(128, 64, 16, 8, 4),
    Block::new(64, 64, 16, 4, 4),
];

/// How a candidate tiles the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tiling {
    /// Register tiles, one invocation per 32×32 tile of `c` (16×16 with scalar loads), no
    /// workgroup memory: shaped for CPU adapters.
    Registers,
    /// The plain shared-memory tile: 64×64 per workgroup, 4×4 per invocation, K slices of 16
    /// without double buffering, scalar loads.
    Shared,
    /// Block tiles staged in workgroup memory: shaped for GPUs.
    Block(Block),
}

/// One way to run a product: a tiling and the number of workgroups K is split across (1: no
/// split; more need the scratch of [`Candidate::scratch`] and no bias or ReLU epilogue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    pub tiling: Tiling,
    pub splits: usize,
}

impl Candidate {
    /// A short name for tables: `registers`, `block 128x128 k8 8x8`, `... split 4`.
    pub fn name(&self) -> String {
        let tiling = match self.tiling {
            Tiling::Registers => "registers".to_string(),
            Tiling::Shared => "shared 64x64 k16 4x4".to_string(),
            Tiling::Block(b) => format!("block {}x{} k{} {}x{}", b.bm, b.bn, b.bk, b.tm, b.tn),
        };
        match self.splits {
            1 => tiling,
            s => format!("{tiling} split {s}"),
        }
    }

    /// Floats of scratch the candidate needs for its partial products (0 when it does not split).
    pub fn scratch(&self, dims: Dims) -> usize {
        match self.splits {
            1 => 0,
            s => s * dims.m * dims.n,
        }
    }

    /// The candidate with its tiling split for `dims` the way [`choose`] splits: until about
    /// SPLIT_WORKGROUPS workgroups run, in K slices of at least SPLIT_MIN_K.
    fn split_for(tiling: Tiling, dims: Dims) -> Candidate {
        let (bm, bn) = match tiling {
            Tiling::Registers => (0, 0),
            Tiling::Shared => (SMEM_TILE, SMEM_TILE),
            Tiling::Block(b) => (b.bm, b.bn),
        };
        let splits = match tiling {
            Tiling::Registers => 1,
            Tiling::Shared | Tiling::Block(_) => {
                let tiles = dims.m.div_ceil(bm) * dims.n.div_ceil(bn);
                if tiles >= SPLIT_WORKGROUPS {
                    1
                } else {
                    let splits = SPLIT_WORKGROUPS
                        .div_ceil(tiles)
                        .min(dims.k / SPLIT_MIN_K)
                        .max(1);
                    dims.k.div_ceil(k_chunk(dims.k, splits)).max(1)
                }
            }
        };
        Candidate { tiling, splits }
    }
}

/// K per split slice when `k` is split `splits` ways.
fn k_chunk(k: usize, splits: usize) -> usize {
    k.div_ceil(splits)
        .next_multiple_of(SPLIT_ALIGN)
        .max(SPLIT_ALIGN)
}

/// Every candidate that can run a `dims` product on `gpu`: the register tiles, every block tiling
/// that fits the adapter's limits, and each of those split along K where the product has few
/// output tiles and a long K. All of them take any shape and mode.
pub fn candidates(gpu: &Gpu, dims: Dims) -> Vec<Candidate> {
    let mut list = vec![Candidate {
        tiling: Tiling::Registers,
        splits: 1,
    }];
    let tilings = BLOCKS
        .into_iter()
        .filter(|b| b.fits(gpu))
        .map(Tiling::Block);
    for tiling in std::iter::once(Tiling::Shared).chain(tilings) {
        list.push(Candidate { tiling, splits: 1 });
        let split = Candidate::split_for(tiling, dims);
        if split.splits > 1 {
            list.push(split);
        }
    }
    list
}

/// The heuristic's pick among [`candidates`], for adapters without tuning: register tiles on CPU
/// adapters; on GPUs the plain shared-memory tile, split along K when there are few output tiles
/// and a long K (used when the caller gives scratch). On an NVIDIA H200 the block tilings ran
/// slower than the plain tile at every benchmarked shape (docs/BENCHMARKS.md), so they are left
/// to autotuning, which times them on the user's adapter.
pub fn choose(gpu: &Gpu, dims: Dims) -> Candidate {
    if gpu.kind() == AdapterKind::Cpu {
        return Candidate {
            tiling: Tiling::Registers,
            splits: 1,
        };
    }
    Candidate::split_for(Tiling::Shared, dims)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    alpha: f32,
    lanes_x: u32,
    a_row: u32,
    a_k: u32,
    b_k: u32,
    b_col: u32,
    mode: u32,
    kchunk: u32,
}

const FLAG_ACCUMULATE: u32 = 1;
const FLAG_BIAS: u32 = 2;
const FLAG_RELU: u32 = 4;
const FLAG_VEC4: u32 = 8;

/// `c = epilogue(alpha · op(a) · op(b))`; `a`, `b` and `c` are read as matrices through
/// [`crate::Shape::rows_cols`] (leading dimensions fold into rows).
///
/// - [`Trans::NN`]: `a [M,K]`, `b [K,N]`; [`Trans::NT`]: `a [M,K]`, `b [N,K]` (`c = a·bᵀ`);
///   [`Trans::TN`]: `a [K,M]`, `b [K,N]` (`c = aᵀ·b`); always `c [M,N]`.
/// - Epilogue: `+ bias[col]` (bias has N elements), then ReLU if `relu`.
/// - `accumulate`: `c += alpha · op(a) · op(b)`. Combining it with `bias` or `relu` is an
///   [`Error::Config`]: the epilogue of a sum of contributions is not the sum of epilogues.
///
/// Runs [`pick`]'s candidate.
/// `c` must not overlap `a`, `b` or the bias. Only records the work (see [`Gpu::dispatch`]).
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, c: &Tensor, spec: &Matmul) -> Result<()> {
    let dims = Dims::of(a, b, spec.trans);
    let room = spec
        .scratch
        .filter(|_| spec.bias.is_none() && !spec.relu)
        .map_or(0, |t| t.numel());
    let pick = pick(gpu, spec.trans, dims, room);
    matmul_candidate(gpu, a, b, c, spec, pick)
}

/// The kernel family's name in the tuning cache.
pub const FAMILY: &str = "matmul";

/// The shape class tuning keys a product by: the mode, the dims and the floats of scratch the
/// caller gives (which decides which splits can run), e.g. `NT 256x4096x128 room 0`.
pub fn shape_class(trans: Trans, dims: Dims, room: usize) -> String {
    format!("{trans:?} {}x{}x{} room {room}", dims.m, dims.n, dims.k)
}

/// Reads what [`shape_class`] wrote.
fn parse_class(class: &str) -> Result<(Trans, Dims, usize)> {
    let bad = || Error::Config(format!("malformed matmul shape class `{class}`"));
    let words: Vec<&str> = class.split_whitespace().collect();
    let [t, mnk, "room", room] = words[..] else {
        return Err(bad());
    };
    let trans = match t {
        "NN" => Trans::NN,
        "NT" => Trans::NT,
        "TN" => Trans::TN,
        _ => return Err(bad()),
    };
    let sizes: Vec<usize> = mnk
        .split('x')
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad())?;
    let [m, n, k] = sizes[..] else {
        return Err(bad());
    };
    Ok((trans, Dims { m, n, k }, room.parse().map_err(|_| bad())?))
}

/// The candidate [`matmul`] runs for a `dims` product with `room` floats of scratch: the tuned
/// choice for its shape class where one is valid, else [`choose`]'s, unsplit when the scratch
/// is too small for its split.
pub fn pick(gpu: &Gpu, trans: Trans, dims: Dims, room: usize) -> Candidate {
    let fits = |c: &Candidate| c.scratch(dims) <= room;
    let tuned = gpu
        .tuning()
        .choice(FAMILY, &shape_class(trans, dims, room))
        .map(str::to_string);
    let tuned = tuned.and_then(|name| {
        candidates(gpu, dims)
            .into_iter()
            .find(|c| c.name() == name && fits(c))
    });
    tuned.unwrap_or_else(|| {
        let mut c = choose(gpu, dims);
        if !fits(&c) {
            c.splits = 1;
        }
        c
    })
}

/// Times every candidate that can run the products of shape class `class` ([`shape_class`]) on
/// random operands, each launch in a submission of its own timed by [`Gpu::sync_timed`].
pub fn time(gpu: &Gpu, class: &str, budget: Budget) -> Result<Vec<Trial>> {
    let (trans, dims, room) = parse_class(class)?;
    let Dims { m, n, k } = dims;
    let mut arena = Arena::for_gpu("tuning", gpu);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (a_shape, b_shape) = match trans {
        Trans::NN => ([m, k], [k, n]),
        Trans::NT => ([m, k], [n, k]),
        Trans::TN => ([k, m], [k, n]),
    };
    let mut random = |arena: &mut Arena, shape: [usize; 2]| {
        let data: Vec<f32> = (0..shape[0] * shape[1])
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        arena.upload(gpu, shape, &data)
    };
    let a = random(&mut arena, a_shape)?;
    let b = random(&mut arena, b_shape)?;
    let c = arena.tensor(gpu, [m, n])?;
    let scratch = (room > 0).then(|| arena.tensor(gpu, [room])).transpose()?;
    let spec = Matmul {
        trans,
        scratch: scratch.as_ref(),
        ..Matmul::default()
    };
    let list: Vec<Candidate> = candidates(gpu, dims)
        .into_iter()
        .filter(|cand| cand.scratch(dims) <= room)
        .collect();
    let names: Vec<String> = list.iter().map(Candidate::name).collect();
    let times = time_candidates(&names, budget, |name| {
        let cand = list
            .iter()
            .find(|cand| cand.name() == name)
            .ok_or_else(|| Error::Config(format!("no matmul candidate `{name}`")))?;
        matmul_candidate(gpu, &a, &b, &c, &spec, *cand)?;
        gpu.sync_timed()
    });
    arena.free(gpu)?;
    Ok(Trial::ranked(
        FAMILY,
        class,
        times?,
        2.0 * (m * n * k) as f64,
    ))
}

/// [`matmul`] on the given candidate (any of [`candidates`]). A split candidate needs
/// [`Candidate::scratch`] floats in `spec.scratch` and no bias or ReLU, else [`Error::Config`].
pub fn matmul_candidate(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    spec: &Matmul,
    candidate: Candidate,
) -> Result<()> {
    let Dims { m, n, k } = dims(a, b, c, spec)?;
    if spec.accumulate && (spec.bias.is_some() || spec.relu) {
        return Err(Error::Config(
            "matmul: `accumulate` cannot be combined with a bias or ReLU epilogue".into(),
        ));
    }
    for (input, what) in [(Some(a), "a"), (Some(b), "b"), (spec.bias, "the bias")] {
        if input.is_some_and(|t| overlaps(t.region, c.region)) {
            return Err(Error::Config(format!(
                "matmul: the output c {:?} overlaps {what}",
                c.shape
            )));
        }
    }
    let splits = candidate.splits.max(1);
    let scratch = match (splits, spec.scratch) {
        (1, _) => None,
        _ if spec.bias.is_some() || spec.relu => {
            return Err(Error::Config(format!(
                "matmul: {} splits K and cannot apply a bias or ReLU epilogue",
                candidate.name()
            )))
        }
        (_, Some(t)) if t.numel() >= splits * m * n => Some(t),
        _ => {
            return Err(Error::Config(format!(
                "matmul: {} needs scratch for {} floats of partial products",
                candidate.name(),
                splits * m * n
            )))
        }
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let dims = Dims { m, n, k };
    let vec4 = k > 0 && dims.vec4(spec.trans);
    let flags = if spec.accumulate { FLAG_ACCUMULATE } else { 0 }
        | if spec.bias.is_some() { FLAG_BIAS } else { 0 }
        | if spec.relu { FLAG_RELU } else { 0 }
        | if vec4 { FLAG_VEC4 } else { 0 };
    // Element strides of op(a)[row, k] and op(b)[k, col].
    let (a_row, a_k) = match spec.trans {
        Trans::NN | Trans::NT => (k, 1),
        Trans::TN => (1, m),
    };
    let (b_k, b_col) = match spec.trans {
        Trans::NN | Trans::TN => (n, 1),
        Trans::NT => (1, k),
    };
    let (kernel, lanes_x, groups) = match candidate.tiling {
        Tiling::Registers => {
            let (kernel, side) = if vec4 && k.is_multiple_of(4) {
                (&TILE4, TILE4_SIDE)
            } else {
                (&TILE1, TILE1_SIDE)
            };
            let (lanes_x, groups) = lane_grid(m, n, side);
            (kernel, lanes_x, groups)
        }
        Tiling::Shared => (
            &SMEM,
            1,
            [
                n.div_ceil(SMEM_TILE) as u32,
                m.div_ceil(SMEM_TILE) as u32,
                1,
            ],
        ),
        Tiling::Block(blk) => (
            block_kernel(blk)?,
            1,
            [n.div_ceil(blk.bn) as u32, m.div_ceil(blk.bm) as u32, 1],
        ),
    };
    let params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        flags,
        alpha: spec.alpha,
        lanes_x: lanes_x as u32,
        a_row: a_row as u32,
        a_k: a_k as u32,
        b_k: b_k as u32,
        b_col: b_col as u32,
        mode: spec.trans as u32,
        kchunk: k as u32,
    };
    // Without a bias, `c` fills the slot; the kernel does not read it. The kernels read any
    // element of the operands through their vec4 views (see the shader).
    let bias = spec.bias.map_or(c.region, |t| t.region);
    let (a4, b4) = (a.region.padded_to_vec4(), b.region.padded_to_vec4());
    let Some(scratch) = scratch.filter(|_| candidate.tiling != Tiling::Registers) else {
        return gpu.dispatch(
            kernel,
            &params,
            &[a4, b4, c.region.padded_to_vec4(), bias],
            groups,
        );
    };
    // Split K: slice z stores alpha · (its partial product) into scratch[z]; a column sum of
    // the [splits, M·N] partials then writes (or adds to) c.
    let kchunk = k_chunk(k, splits);
    let splits = k.div_ceil(kchunk).max(1);
    let partials = Tensor {
        region: scratch.region.slice(0, splits * m * n),
        shape: [splits, m * n].into(),
    };
    let params = Params {
        flags: flags & FLAG_VEC4,
        kchunk: kchunk as u32,
        ..params
    };
    gpu.dispatch(
        kernel,
        &params,
        &[a4, b4, partials.region.padded_to_vec4(), partials.region],
        [groups[0], groups[1], splits as u32],
    )?;
    let flat_c = Tensor {
        region: c.region,
        shape: [m * n].into(),
    };
    reduce::reduce(
        gpu,
        &partials,
        &flat_c,
        Reduce::Sum,
        Axis::Cols,
        spec.accumulate,
    )
}

/// Floats of scratch with which [`matmul`] splits the K loop of `op(a) · op(b)` on `gpu` (0 when
/// it would not split, or for operands whose shapes do not multiply: [`matmul`] reports those).
/// The heuristic's size: scratch is planned before any tuning, and the room it leaves is part of
/// the shape class that tuning times.
pub fn split_k_scratch_for(gpu: &Gpu, a: &Tensor, b: &Tensor, trans: Trans) -> usize {
    let dims = Dims::of(a, b, trans);
    choose(gpu, dims).scratch(dims)
}

/// One build of the shader per block tiling, each with its own file name so that the pipeline
/// cache tells them apart.
static BLOCK_SOURCES: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
    let body = SOURCE
        .split_once(PARAMS_END)
        .map_or(SOURCE, |(_, body)| body);
    BLOCKS
        .iter()
        .map(|b| {
            let name = format!("matmul.wgsl {}x{} k{} {}x{}", b.bm, b.bn, b.bk, b.tm, b.tn);
            (name, format!("{}{PARAMS_END}{body}", b.params()))
        })
        .collect()
});

fn block_kernel(blk: Block) -> Result<&'static Kernel> {
    static KERNELS: LazyLock<Vec<Kernel>> = LazyLock::new(|| {
        BLOCK_SOURCES
            .iter()
            .map(|(file, source)| Kernel {
                file: file.as_str(),
                source: source.as_str(),
                entry: "block",
                ..TILE4
            })
            .collect()
    });
    BLOCKS
        .iter()
        .position(|&b| b == blk)
        .map(|i| &KERNELS[i])
        .ok_or_else(|| Error::Config(format!("matmul: {blk:?} is not one of BLOCKS")))
}

/// (M, N, K) of the product, or a shape error naming all shapes and the mode.
fn dims(a: &Tensor, b: &Tensor, c: &Tensor, spec: &Matmul) -> Result<Dims> {
    let (ar, ac) = a.shape.rows_cols();
    let (br, bc) = b.shape.rows_cols();
    let (m, k, kb, n) = match spec.trans {
        Trans::NN => (ar, ac, br, bc),
        Trans::NT => (ar, ac, bc, br),
        Trans::TN => (ac, ar, br, bc),
    };
    let fail = |why: String| {
        Err(Error::shape(
            "matmul",
            format!(
                "{:?}: a {:?} · b {:?} -> c {:?}: {why}",
                spec.trans, a.shape, b.shape, c.shape
            ),
        ))
    };
    if k != kb {
        return fail(format!("inner dimensions differ ({k} and {kb})"));
    }
    if c.shape.rows_cols() != (m, n) {
        return fail(format!("c must be {m}×{n}"));
    }
    if let Some(t) = spec.bias {
        if t.numel() != n {
            return fail(format!("bias {:?} must have {n} elements", t.shape));
        }
    }
    Ok(Dims { m, n, k })
}

fn overlaps(x: Region, y: Region) -> bool {
    x.buffer == y.buffer
        && x.len > 0
        && y.len > 0
        && x.offset < y.offset + y.bytes()
        && y.offset < x.offset + x.bytes()
}

/// How the 8 lanes of a register-tile workgroup are laid out (`lanes_x` of them side by side
/// along N) and the workgroup grid: the layout that covers `m × n` with the least padding,
/// preferring tall workgroups. Workgroups run in x-major order, so neighbours share their rows
/// of `a`: with the lanes stacked along M that shared panel is the large one and stays in
/// cache, while each workgroup streams only a narrow panel of `b`.
fn lane_grid(m: usize, n: usize, side: usize) -> (usize, [u32; 3]) {
    [1, 2, 4, 8]
        .into_iter()
        .map(|lanes_x| {
            let (wg_rows, wg_cols) = (LANES / lanes_x * side, lanes_x * side);
            let (gy, gx) = (m.div_ceil(wg_rows), n.div_ceil(wg_cols));
            (
                gy * wg_rows * gx * wg_cols,
                lanes_x,
                [gx as u32, gy as u32, 1],
            )
        })
        .min_by_key(|&(area, _, _)| area)
        .map(|(_, lanes_x, groups)| (lanes_x, groups))
        .expect("four layouts")
}

/// CPU reference of [`matmul`] in f64. `a`, `b` are laid out as for `spec.trans`; `c_prev` is
/// read only when accumulating; `bias` stands in for `spec.bias` (whose GPU tensor is ignored).
#[allow(clippy::too_many_arguments)]
pub fn reference(
    a: &[f32],
    b: &[f32],
    c_prev: &[f32],
    m: usize,
    n: usize,
    k: usize,
    spec: &Matmul,
    bias: Option<&[f32]>,
) -> Vec<f64> {
    let at = |i: usize, q: usize| match spec.trans {
        Trans::NN | Trans::NT => a[i * k + q],
        Trans::TN => a[q * m + i],
    } as f64;
    let bt = |q: usize, j: usize| match spec.trans {
        Trans::NN | Trans::TN => b[q * n + j],
        Trans::NT => b[j * k + q],
    } as f64;
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|q| at(i, q) * bt(q, j)).sum();
            let v = spec.alpha as f64 * dot;
            out.push(if spec.accumulate {
                c_prev[i * n + j] as f64 + v
            } else {
                let v = v + bias.map_or(0.0, |b| b[j] as f64);
                if spec.relu {
                    v.max(0.0)
                } else {
                    v
                }
            });
        }
    }
    out
}
