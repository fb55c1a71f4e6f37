//! 2-D convolution (`shaders/conv.wgsl`): forward, input gradient and weight gradient as implicit
//! GEMMs, with f64 CPU references.
//!
//! **Layout.** Activations are NHWC (`[N, H, W, C]`, channels last) everywhere in the crate: a 1×1
//! convolution is then literally a matmul over `[N·H·W, C]`, BatchNorm statistics are column
//! reductions of an `[N·H·W, C]` matrix, and the implicit-GEMM reduction dimension `(kh, kw, cin)` is
//! contiguous in memory. Weights are `[Cout, KH, KW, Cin]`, so `y = im2col(x) · Wᵀ` (an "NT" GEMM);
//! checkpoint export permutes them to PyTorch's `[Cout, Cin, KH, KW]`.
//!
//! **Kernels.** No im2col matrix is ever materialised: the gather is folded into the GEMM's loads.
//! Each pass can run several kernel families ([`Candidate`]): register-tiled GEMMs without
//! workgroup memory or barriers (a 16-pixel × 16-channel tile per invocation, 32 × 32 for the
//! vec4 weight gradient, four pixels per step like the matmul's), the fast shape on CPU adapters
//! such as llvmpipe, where they run vec4 loads when both channel counts are multiples of 4 and
//! scalar ones otherwise (with vec4 stores when only the input channels are odd); shared-memory
//! GEMMs for GPUs, on which those tiles spill: a 64×64 output tile per workgroup, the reduction
//! staged in slices of 16; and direct kernels. [`Conv2d::candidates`] lists those that fit a
//! problem, [`Conv2d::choose`] picks one per adapter kind and [`Conv2d::pick`] takes the tuned
//! choice over it ([`time`] measures them all); the `run` methods take a given one (the tests
//! run every candidate).
//!
//! **Direct kernels.** One input channel and a kernel of at most 3×3 (a first layer on grayscale
//! images) make the GEMM's reduction (at most 9 long) too short to pay for its tile: its loads and
//! epilogue dominate. Direct kernels instead hold the weights of 32 output channels in registers.
//! The forward and the weight gradient walk runs of whole output rows, sliding a 3×3 input frame
//! along each (3 new inputs per pixel at stride 1, instead of gathering 9); the weight gradient's
//! runs give partial sums that a second pass adds up (deterministic, no atomics). The input
//! gradient runs one invocation per image: it reads every dy pixel once and completes dx two
//! columns at a time along each row, so that each dx element is written about once and updated
//! twice instead of gathering 9 dy rows. It needs an even width and a column stride of 1 or 2.
//! Where the adapter has 64-bit integers in WGSL (Vulkan; not wgpu's GL backend), these kernels
//! move rows of channels (and pairs of input or dx columns) as 64-bit words, and so do the vec4
//! GEMMs where both channel counts are multiples of 8: llvmpipe's cost is per component moved
//! (see `Direct` below).
//!
//! **Known limits.** In a direct layer every output element costs a storage access and only 9
//! multiply-adds, so these passes stay bound by llvmpipe's per-lane loads and stores rather than by
//! arithmetic. With 2–3 input channels and 3×3 kernels (27-long rows) the scalar GEMM runs, at a
//! fraction of the vec4 rate. On GPUs, strided input gradients and reductions shorter than 32
//! keep the register tiles (see [`Conv2d::choose`]).

mod candidate;
mod reference;
mod tuning;

pub use candidate::{Candidate, ConvShape, Pass};
pub use reference::{reference_backward_input, reference_backward_weight, reference_forward};
pub use tuning::{shape_class, time, FAMILY};

use crate::error::{Error, Result};
use crate::gpu::{AdapterKind, Gpu, Kernel};
use crate::memory::Tensor;

/// An entry point of `shaders/conv.wgsl`, built behind a prelude: `shaders/conv_words<bits>.wgsl`,
/// the access to runs of channels of the direct kernels (see [`Direct`]) and of the vec4 GEMMs,
/// and the constant `SLIDES`, how the direct kernels' input frame moves from one output pixel to
/// the next. The other kernels use neither and take
/// the 32-bit, 1-slide build.
macro_rules! conv {
    (@build "32", $slides:literal) => {
        conv!(@source $slides, "conv_words32.wgsl", "conv.wgsl")
    };
    (@build "64", $slides:literal) => {
        conv!(@source $slides, "conv_words64.wgsl", "conv.wgsl")
    };
    (@source $slides:literal, $($file:literal),+) => {
        concat!(
            "const SLIDES: u32 = ",
            $slides,
            "u;\n",
            $(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)),)+
        )
    };
    ($bits:tt, $slides:tt, $entry:literal) => {
        Kernel {
            file: concat!("conv.wgsl+words", $bits, "+slides", $slides),
            source: conv!(@build $bits, $slides),
            entry: $entry,
            buffers: 4,
            words: 0,
        }
    };
    ($entry:literal) => {
        conv!("32", "1", $entry)
    };
}

/// The 32-bit and 64-bit builds of an entry point with `SLIDES` = `$slides`.
macro_rules! widths {
    ($slides:tt, $entry:literal) => {
        [conv!("32", $slides, $entry), conv!("64", $slides, $entry)]
    };
}

/// The builds of a direct kernel, by word width and slides (see [`Direct`]).
macro_rules! direct {
    ($entry:literal) => {
        Direct([direct!(@ "32", $entry), direct!(@ "64", $entry)])
    };
    (@ $bits:tt, $entry:literal) => {
        [
            conv!($bits, "1", $entry),
            conv!($bits, "2", $entry),
            conv!($bits, "0", $entry),
        ]
    };
}

/// The vec4 GEMMs by word width: 64-bit where both channel counts are multiples of 8 (see
/// [`wide_gemm`]).
const FORWARD4: [Kernel; 2] = widths!("1", "forward4");
const FORWARD1: Kernel = conv!("forward1");
const FORWARD1_OUT4: Kernel = conv!("forward1_out4");
/// By word width, as [`FORWARD4`].
const INPUT_GRAD4: [Kernel; 2] = widths!("1", "input_grad4");
const INPUT_GRAD1: Kernel = conv!("input_grad1");
/// By word width, as [`FORWARD4`].
const WEIGHT_GRAD4: [Kernel; 2] = widths!("1", "weight_grad4");
const WEIGHT_GRAD1: Kernel = conv!("weight_grad1");
const WEIGHT_GRAD_REDUCE: Kernel = conv!("weight_grad_reduce");
const WEIGHT_GRAD_REDUCE_TREE: Kernel = conv!("weight_grad_reduce_tree");
const WEIGHT_GRAD_SMEM: Kernel = conv!("weight_grad_smem");
const FORWARD_SMEM: Kernel = conv!("forward_smem");
const INPUT_GRAD_SMEM: Kernel = conv!("input_grad_smem");
const FORWARD_DIRECT: Direct = direct!("forward_direct");
/// The input gradient reads no input frame: by column stride (1, 2) and word width.
const INPUT_GRAD_DIRECT: [[Kernel; 2]; 2] = [
    widths!("1", "input_grad_direct"),
    widths!("2", "input_grad_direct"),
];
const WEIGHT_GRAD_DIRECT: Direct = direct!("weight_grad_direct");

/// The builds of a direct kernel.
/// - Word width: llvmpipe moves storage one lane and one component at a time (a bounds check per
///   component), so where the adapter has 64-bit integers and the output channels are a multiple
///   of 8, the rows of y and dy move as `vec4<u64>`, 8 channels per access, and at stride 2 the
///   two input columns a pixel brings in as one `u64` (which needs them to be an aligned pair:
///   even widths, odd paddings); otherwise everything moves as 32-bit words.
/// - Slides: the column stride where it is 1 or 2 (how many columns the input frame moves per
///   pixel), 0 for wider strides (each frame gathered afresh).
struct Direct([[Kernel; 3]; 2]);

impl Direct {
    fn pick(&self, gpu: &Gpu, d: &Dims, g: &Conv2d) -> &Kernel {
        let sw = g.stride.1;
        let pairs = sw != 2 || (d.w.is_multiple_of(2) && g.pad.1 % 2 == 1);
        &self.0[usize::from(wide_rows(gpu, d) && pairs)][sw.min(3) - 1]
    }
}

/// Whether the direct kernels can move rows of channels as 64-bit words (see [`Direct`]).
fn wide_rows(gpu: &Gpu, d: &Dims) -> bool {
    gpu.has_int64() && d.cout.is_multiple_of(8)
}

/// Whether the vec4 GEMMs can move channels as 64-bit words: both channel counts multiples of 8.
fn wide_gemm(gpu: &Gpu, d: &Dims) -> bool {
    gpu.has_int64() && d.cin.is_multiple_of(8) && d.cout.is_multiple_of(8)
}

/// Register tile of one invocation: pixels × channels (the shader's TM and TN).
const TM: usize = 16;
const TN: usize = 16;
/// Invocations per workgroup along the pixel dimension.
const WG: usize = 64;
/// Weight gradient: split the pixel reduction until about this many invocations of TM × TM tiles
/// (or as much work in larger tiles) run, but never into chunks shorter than MIN_CHUNK pixels.
const WGRAD_INVOCATIONS: usize = 4096;
const MIN_CHUNK: usize = 64;
/// Shared-memory kernels (GPUs): 64×64 output tiles per workgroup; the weight gradient splits its
/// pixel reduction until about SMEM_WGRAD_WORKGROUPS workgroups run.
const SMEM_TILE: usize = 64;
const SMEM_SLICE: usize = 16;
const SMEM_WGRAD_WORKGROUPS: usize = 512;
/// Direct kernels: CD output channels per invocation (the shader's CD). The forward splits its
/// output rows into runs, one per invocation, but no run is shorter than MIN_RUN pixels (each
/// invocation first loads 9·CD weights). The weight gradient splits its rows the same way; each
/// split's 9·CD partial sums are added up afterwards. How many invocations: see
/// [`direct_invocations`]. Runs are whole rows so that an invocation slides its input window
/// along each row (see the shader). CD is also the side of the vec4 weight gradient's tile.
const CD: usize = 32;
const MIN_RUN: usize = 96;

const F_BIAS: u32 = 1;
const F_RELU: u32 = 2;
const F_ACC: u32 = 4;

/// Geometry of a 2-D convolution; pairs are `(height, width)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl Conv2d {
    /// Output height and width for an `h × w` input; an error when the kernel does not fit in the
    /// padded input or the geometry is degenerate.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if self.kh == 0 || self.kw == 0 || self.stride.0 == 0 || self.stride.1 == 0 {
            return Err(Error::shape(
                "conv2d",
                format!("kernel sizes and strides must be positive, got {self:?}"),
            ));
        }
        let (hp, wp) = (h + 2 * self.pad.0, w + 2 * self.pad.1);
        if self.kh > hp || self.kw > wp {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "kernel {}x{} is larger than the padded input {hp}x{wp} (input {h}x{w}, padding {:?})",
                    self.kh, self.kw, self.pad
                ),
            ));
        }
        Ok((
            (hp - self.kh) / self.stride.0 + 1,
            (wp - self.kw) / self.stride.1 + 1,
        ))
    }

    /// Scratch (in f32 elements) with which [`backward_weight`] reaches full parallelism on `gpu`
    /// for an input `[n, h, w, cin]` and `cout` output channels. Smaller scratch works too (fewer
    /// splits).
    pub fn weight_grad_scratch(
        &self,
        gpu: &Gpu,
        n: usize,
        h: usize,
        w: usize,
        cin: usize,
        cout: usize,
    ) -> usize {
        match self.out_hw(h, w) {
            Ok((ho, wo)) => {
                let d = Dims {
                    n,
                    h,
                    w,
                    cin,
                    ho,
                    wo,
                    cout,
                };
                let c = self.choose(gpu.kind(), &d.shape(), Pass::WeightGrad);
                let splits = d.wgrad_splits(self, c, usize::MAX).0;
                if splits > 1 {
                    splits * cout * self.kh * self.kw * cin
                } else {
                    0
                }
            }
            Err(_) => 0,
        }
    }

    /// Multiply-adds × 2 of one pass (forward, input gradient and weight gradient all cost the same).
    pub fn flops(&self, n: usize, h: usize, w: usize, cin: usize, cout: usize) -> f64 {
        match self.out_hw(h, w) {
            Ok((ho, wo)) => 2.0 * (n * ho * wo) as f64 * (cout * self.kh * self.kw * cin) as f64,
            Err(_) => 0.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    h: u32,
    w: u32,
    cin: u32,
    ho: u32,
    wo: u32,
    cout: u32,
    m: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    flags: u32,
    k: u32,
    splits: u32,
    chunk: u32,
    total: u32,
    rsplit: u32,
}

/// Sizes of one convolution, checked against the tensors' shapes.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    h: usize,
    w: usize,
    cin: usize,
    ho: usize,
    wo: usize,
    cout: usize,
}

impl Dims {
    /// Checks `x [N,H,W,Cin]`, `w [Cout,KH,KW,Cin]` and `y [N,Ho,Wo,Cout]` against each other.
    fn check(op: &'static str, g: &Conv2d, x: &Tensor, w: &Tensor, y: &Tensor) -> Result<Dims> {
        let (xs, ws, ys) = (x.shape.dims(), w.shape.dims(), y.shape.dims());
        let bad = |what: &str| {
            Err(Error::shape(
                op,
                format!(
                    "{what}: input {:?}, weight {:?}, output {:?} for {g:?} \
                     (expected [N,H,W,Cin], [Cout,KH,KW,Cin], [N,Ho,Wo,Cout])",
                    x.shape, w.shape, y.shape
                ),
            ))
        };
        if xs.len() != 4 || ws.len() != 4 || ys.len() != 4 {
            return bad("all three tensors must have rank 4");
        }
        let (ho, wo) = g.out_hw(xs[1], xs[2])?;
        let d = Dims {
            n: xs[0],
            h: xs[1],
            w: xs[2],
            cin: xs[3],
            ho,
            wo,
            cout: ws[0],
        };
        if ws[1] != g.kh || ws[2] != g.kw || ws[3] != d.cin {
            return bad("the weight does not match the kernel size or input channels");
        }
        if ys != [d.n, ho, wo, d.cout] {
            return bad("the output shape does not match");
        }
        if d.n * d.h * d.w * d.cin == 0 || d.cout == 0 {
            return bad("empty tensors");
        }
        Ok(d)
    }

    fn shape(&self) -> ConvShape {
        ConvShape {
            n: self.n,
            h: self.h,
            w: self.w,
            cin: self.cin,
            cout: self.cout,
        }
    }

    /// Candidate `c`, or [`Conv2d::pick`]'s when `None` (`room`: partial weight gradients the
    /// scratch holds); an error when `c` cannot run `pass` of `g` on these sizes.
    fn candidate(
        &self,
        op: &'static str,
        gpu: &Gpu,
        (g, pass, room): (&Conv2d, Pass, usize),
        c: Option<Candidate>,
    ) -> Result<Candidate> {
        let c = c.unwrap_or_else(|| g.pick(gpu, &self.shape(), pass, room));
        if g.fits(&self.shape(), pass, c) {
            return Ok(c);
        }
        Err(Error::shape(
            op,
            format!(
                "kernel {c:?} cannot run {g:?} on {:?}; it can run {:?}",
                self.shape(),
                g.candidates(&self.shape(), pass)
            ),
        ))
    }

    fn params(&self, g: &Conv2d, m: usize, flags: u32) -> Params {
        Params {
            n: self.n as u32,
            h: self.h as u32,
            w: self.w as u32,
            cin: self.cin as u32,
            ho: self.ho as u32,
            wo: self.wo as u32,
            cout: self.cout as u32,
            m: m as u32,
            kh: g.kh as u32,
            kw: g.kw as u32,
            sh: g.stride.0 as u32,
            sw: g.stride.1 as u32,
            ph: g.pad.0 as u32,
            pw: g.pad.1 as u32,
            flags,
            k: (g.kh * g.kw * self.cin) as u32,
            splits: 0,
            chunk: 0,
            total: 0,
            rsplit: 0,
        }
    }

    /// The register-tiled weight gradient's tiles along a weight row and across output channels,
    /// and their side: 32 × 32 for vec4 (CD channels × CD positions of a weight row), TM × TN
    /// otherwise.
    fn wgrad_tiles(&self, g: &Conv2d, c: Candidate) -> (usize, usize, usize) {
        let k = g.kh * g.kw * self.cin;
        if c == Candidate::Tile4 {
            (k.div_ceil(CD), self.cout.div_ceil(CD), CD)
        } else {
            (k.div_ceil(TN), self.cout.div_ceil(TM), TM)
        }
    }

    /// (splits, chunk) of the weight-gradient reduction over its units, with at most `max_splits`
    /// splits, for candidate `c`: whole output rows (n·ho of them) for the direct kernel, pixels
    /// (n·ho·wo) otherwise.
    fn wgrad_splits(&self, g: &Conv2d, c: Candidate, max_splits: usize) -> (usize, usize) {
        let (units, min_chunk) = self.wgrad_units(c);
        let want = match c {
            Candidate::Direct => direct_invocations() / self.cout.div_ceil(CD),
            Candidate::Shared => {
                let k = g.kh * g.kw * self.cin;
                SMEM_WGRAD_WORKGROUPS / (k.div_ceil(SMEM_TILE) * self.cout.div_ceil(SMEM_TILE))
            }
            Candidate::Tile4 | Candidate::Tile1 => {
                let (cols, rows, side) = self.wgrad_tiles(g, c);
                WGRAD_INVOCATIONS * TM * TM / (cols * rows * side * side)
            }
        };
        let want = want.min(units.div_ceil(min_chunk)).min(max_splits).max(1);
        let chunk = units.div_ceil(want);
        (units.div_ceil(chunk), chunk)
    }

    /// The units the weight-gradient reduction of candidate `c` is split into, and the fewest per
    /// split.
    fn wgrad_units(&self, c: Candidate) -> (usize, usize) {
        if c == Candidate::Direct {
            (self.n * self.ho, MIN_CHUNK.div_ceil(self.wo))
        } else {
            (self.n * self.ho * self.wo, MIN_CHUNK)
        }
    }
}

/// Invocations of a direct kernel (per channel block for the weight gradient). llvmpipe runs each
/// workgroup on one thread, one SIMD group after another, and each invocation pays for loading its
/// weights before its run: one workgroup per core keeps every core busy with the fewest, longest
/// runs.
fn direct_invocations() -> usize {
    WG * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Workgroups for `row_tiles` tiles of TM rows by `cols` channels.
fn tile_groups(row_tiles: usize, cols: usize) -> [u32; 3] {
    [row_tiles.div_ceil(WG) as u32, cols.div_ceil(TN) as u32, 1]
}

/// `y [N,Ho,Wo,Cout] = conv(x [N,H,W,Cin], w [Cout,KH,KW,Cin]) (+ bias [Cout])`, then ReLU if
/// `relu`, with the kernel [`Conv2d::choose`] picks for `gpu`.
pub fn forward(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    g: &Conv2d,
    relu: bool,
) -> Result<()> {
    Forward {
        x,
        w,
        bias,
        y,
        relu,
    }
    .run(gpu, g, None)
}

/// The operands of [`forward`], which [`Forward::run`] launches with a given candidate.
#[derive(Clone, Copy)]
pub struct Forward<'a> {
    pub x: &'a Tensor,
    pub w: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub y: &'a Tensor,
    pub relu: bool,
}

/// The operands of [`backward_input`], which [`InputGrad::run`] launches with a given candidate.
#[derive(Clone, Copy)]
pub struct InputGrad<'a> {
    pub dy: &'a Tensor,
    pub w: &'a Tensor,
    pub dx: &'a Tensor,
    pub accumulate: bool,
}

/// The operands of [`backward_weight`], which [`WeightGrad::run`] launches with a given
/// candidate.
#[derive(Clone, Copy)]
pub struct WeightGrad<'a> {
    pub x: &'a Tensor,
    pub dy: &'a Tensor,
    pub dw: &'a Tensor,
    pub scratch: Option<&'a Tensor>,
    pub accumulate: bool,
}

impl Forward<'_> {
    /// [`forward`] with candidate `c` (an error when it does not fit), or the chosen one for
    /// `None`.
    pub fn run(&self, gpu: &Gpu, g: &Conv2d, c: Option<Candidate>) -> Result<()> {
        const OP: &str = "conv2d forward";
        let (x, w, bias, y, relu) = (self.x, self.w, self.bias, self.y, self.relu);
        let d = Dims::check(OP, g, x, w, y)?;
        if let Some(b) = bias {
            if b.numel() != d.cout {
                return Err(Error::shape(
                    OP,
                    format!("bias {:?} for weight {:?}", b.shape, w.shape),
                ));
            }
        }
        let c = d.candidate(OP, gpu, (g, Pass::Forward, 0), c)?;
        let m = d.n * d.ho * d.wo;
        let flags = if bias.is_some() { F_BIAS } else { 0 } | if relu { F_RELU } else { 0 };
        let regions = [x.region, w.region, bias.unwrap_or(w).region, y.region];
        match c {
            Candidate::Direct => {
                // Runs of whole output rows, one per invocation, times the channel blocks.
                let rows = d.n * d.ho;
                let chunk = rows
                    .div_ceil(direct_invocations())
                    .max(MIN_RUN.div_ceil(d.wo));
                let mut params = d.params(g, rows, flags);
                params.chunk = chunk as u32;
                let groups = [
                    rows.div_ceil(chunk).div_ceil(WG) as u32,
                    d.cout.div_ceil(CD) as u32,
                    1,
                ];
                // x padded to whole vec4s: the 64-bit builds read it as pairs of words.
                gpu.dispatch(
                    FORWARD_DIRECT.pick(gpu, &d, g),
                    &params,
                    &[
                        x.region.padded_to_vec4(),
                        regions[1],
                        regions[2],
                        regions[3],
                    ],
                    groups,
                )
            }
            Candidate::Shared => gpu.dispatch(
                &FORWARD_SMEM,
                &d.params(g, m, flags),
                &regions,
                [
                    d.cout.div_ceil(SMEM_TILE) as u32,
                    m.div_ceil(SMEM_TILE) as u32,
                    1,
                ],
            ),
            Candidate::Tile4 | Candidate::Tile1 => {
                let kernel = if c == Candidate::Tile4 {
                    &FORWARD4[usize::from(wide_gemm(gpu, &d))]
                } else if d.cout.is_multiple_of(4) {
                    &FORWARD1_OUT4
                } else {
                    &FORWARD1
                };
                gpu.dispatch(
                    kernel,
                    &d.params(g, m, flags),
                    &regions,
                    tile_groups(m.div_ceil(TM), d.cout),
                )
            }
        }
    }
}

/// `dx [N,H,W,Cin] (+)= conv_transpose(dy [N,Ho,Wo,Cout], w [Cout,KH,KW,Cin])`, computed as a
/// gather: every input pixel sums over the output pixels and taps that read it. Input pixels are
/// grouped by position modulo the stride so that each group is reached by one fixed set of taps.
pub fn backward_input(
    gpu: &Gpu,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    g: &Conv2d,
    accumulate: bool,
) -> Result<()> {
    InputGrad {
        dy,
        w,
        dx,
        accumulate,
    }
    .run(gpu, g, None)
}

impl InputGrad<'_> {
    /// [`backward_input`] with candidate `c` (an error when it does not fit), or the chosen one for
    /// `None`.
    pub fn run(&self, gpu: &Gpu, g: &Conv2d, c: Option<Candidate>) -> Result<()> {
        const OP: &str = "conv2d backward_input";
        let (dy, w, dx, accumulate) = (self.dy, self.w, self.dx, self.accumulate);
        let d = Dims::check(OP, g, dx, w, dy)?;
        let c = d.candidate(OP, gpu, (g, Pass::InputGrad, 0), c)?;
        let flags = if accumulate { F_ACC } else { 0 };
        let regions = [dy.region, w.region, w.region, dx.region];
        match c {
            // One invocation per image (see the shader); it writes dx two columns at a time.
            Candidate::Direct => gpu.dispatch(
                &INPUT_GRAD_DIRECT[g.stride.1 - 1][usize::from(wide_rows(gpu, &d))],
                &d.params(g, d.n, flags),
                &[dy.region, w.region, dy.region, dx.region],
                [d.n.div_ceil(WG) as u32, 1, 1],
            ),
            Candidate::Shared => {
                let pixels = d.n * d.h * d.w;
                gpu.dispatch(
                    &INPUT_GRAD_SMEM,
                    &d.params(g, pixels, flags),
                    &regions,
                    [
                        d.cin.div_ceil(SMEM_TILE) as u32,
                        pixels.div_ceil(SMEM_TILE) as u32,
                        1,
                    ],
                )
            }
            Candidate::Tile4 | Candidate::Tile1 => {
                let (sh, sw) = g.stride;
                let mut tiles = 0;
                for rh in 0..sh.min(d.h) {
                    for rw in 0..sw.min(d.w) {
                        tiles +=
                            (d.n * (d.h - rh).div_ceil(sh) * (d.w - rw).div_ceil(sw)).div_ceil(TM);
                    }
                }
                let kernel = if c == Candidate::Tile4 {
                    &INPUT_GRAD4[usize::from(wide_gemm(gpu, &d))]
                } else {
                    &INPUT_GRAD1
                };
                gpu.dispatch(
                    kernel,
                    &d.params(g, tiles, flags),
                    &regions,
                    tile_groups(tiles, d.cin),
                )
            }
        }
    }
}

/// `dw [Cout,KH,KW,Cin] (+)= dyᵀ · im2col(x)`, a GEMM whose reduction runs over all N·Ho·Wo output
/// pixels. The reduction is split into chunks whose partial sums go to `scratch` and are then
/// added up by a second small pass; the number of chunks is bounded by `scratch`'s size
/// ([`Conv2d::weight_grad_scratch`] gives the size for full parallelism). Without scratch (or with
/// too little for two chunks) one pass reduces everything, which is correct but leaves most of the
/// device idle. The bias gradient (a column sum of dy) is not computed here.
pub fn backward_weight(
    gpu: &Gpu,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    scratch: Option<&Tensor>,
    g: &Conv2d,
    accumulate: bool,
) -> Result<()> {
    WeightGrad {
        x,
        dy,
        dw,
        scratch,
        accumulate,
    }
    .run(gpu, g, None)
}

impl WeightGrad<'_> {
    /// [`backward_weight`] with candidate `c` (an error when it does not fit), or the chosen one for
    /// `None`.
    pub fn run(&self, gpu: &Gpu, g: &Conv2d, c: Option<Candidate>) -> Result<()> {
        const OP: &str = "conv2d backward_weight";
        let (x, dy, dw, scratch) = (self.x, self.dy, self.dw, self.scratch);
        let accumulate = self.accumulate;
        let d = Dims::check(OP, g, x, dw, dy)?;
        let total = dw.numel();
        let room = scratch.map_or(0, |t| t.numel() / total);
        let c = d.candidate(OP, gpu, (g, Pass::WeightGrad, room), c)?;
        let (splits, chunk) = d.wgrad_splits(g, c, room.max(1));
        let one_pass = splits == 1;
        let acc_flag = if accumulate { F_ACC } else { 0 };
        let units = d.wgrad_units(c).0;
        let mut params = d.params(g, units, if one_pass { acc_flag } else { 0 });
        params.splits = splits as u32;
        params.chunk = chunk as u32;
        params.total = total as u32;
        let dst = match scratch {
            Some(t) if !one_pass => t.region,
            _ => dw.region,
        };
        let (kernel, groups) = match c {
            Candidate::Direct => (
                WEIGHT_GRAD_DIRECT.pick(gpu, &d, g),
                [splits.div_ceil(WG) as u32, d.cout.div_ceil(CD) as u32, 1],
            ),
            Candidate::Shared => (
                &WEIGHT_GRAD_SMEM,
                [
                    (g.kh * g.kw * d.cin).div_ceil(SMEM_TILE) as u32,
                    d.cout.div_ceil(SMEM_TILE) as u32,
                    splits as u32,
                ],
            ),
            Candidate::Tile4 | Candidate::Tile1 => {
                let (cols, rows, _) = d.wgrad_tiles(g, c);
                let kernel = if c == Candidate::Tile4 {
                    &WEIGHT_GRAD4[usize::from(wide_gemm(gpu, &d))]
                } else {
                    &WEIGHT_GRAD1
                };
                (
                    kernel,
                    [(splits * cols).div_ceil(WG) as u32, rows as u32, 1],
                )
            }
        };
        // The direct kernels' 64-bit builds read x as pairs of words: bound padded to whole vec4s.
        let xr = if c == Candidate::Direct {
            x.region.padded_to_vec4()
        } else {
            x.region
        };
        gpu.dispatch(kernel, &params, &[xr, dy.region, dy.region, dst], groups)?;
        if one_pass {
            return Ok(());
        }
        params.flags = acc_flag;
        // Threads per weight in the reduce (see the shader): a workgroup tree on GPUs, where one
        // thread looping over the splits is latency-bound; one thread on CPU adapters, where the
        // tree's barriers cost more than the loop.
        let (reduce, rsplit) = match gpu.kind() {
            AdapterKind::Gpu => (&WEIGHT_GRAD_REDUCE_TREE, 64),
            AdapterKind::Cpu => (&WEIGHT_GRAD_REDUCE, 1),
        };
        params.rsplit = rsplit;
        gpu.dispatch(
            reduce,
            &params,
            &[dst, dy.region, dy.region, dw.region],
            super::grid_1d(total * params.rsplit as usize, 256),
        )
    }
}
