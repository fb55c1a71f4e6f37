//! The kernels a convolution pass can run ([`Candidate`]), which of them fit a problem
//! ([`Conv2d::candidates`]) and the one the launchers run by default ([`Conv2d::choose`]).

use super::{Conv2d, SMEM_SLICE, SMEM_TILE};
use crate::gpu::AdapterKind;

/// Shape of a convolution problem: input `x [n,h,w,cin]`, weights `[cout,kh,kw,cin]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
}

/// One of the three passes of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// `y = conv(x, w)` ([`super::forward`]).
    Forward,
    /// `dx = conv_transpose(dy, w)` ([`super::backward_input`]).
    InputGrad,
    /// `dw = dyᵀ · im2col(x)` ([`super::backward_weight`]).
    WeightGrad,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Forward, Pass::InputGrad, Pass::WeightGrad];
}

/// A kernel family of the convolution passes. Within a family the build (64-bit words where the
/// adapter has them and the channel counts allow, slides of the direct kernels' input frame,
/// vec4 stores of the scalar forward) follows from the shape alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Candidate {
    /// Direct kernels: the weights of 32 output channels in registers, runs of whole output rows
    /// (the input gradient: one image per invocation, two dx columns at a time). One input
    /// channel, kernels up to 3×3, output channels in vec4s; the input gradient also needs an
    /// even width and a column stride of 1 or 2.
    Direct,
    /// Implicit GEMM with a register tile per invocation and vec4 loads, no workgroup memory:
    /// both channel counts multiples of 4.
    Tile4,
    /// Implicit GEMM with a register tile per invocation and scalar loads: any shape.
    Tile1,
    /// Implicit GEMM with 64×64 output tiles per workgroup, the reduction staged in workgroup
    /// memory. The input gradient needs stride 1.
    Shared,
}

impl Candidate {
    pub const ALL: [Candidate; 4] = [
        Candidate::Direct,
        Candidate::Tile4,
        Candidate::Tile1,
        Candidate::Shared,
    ];
}

impl Conv2d {
    /// Whether `c` can run `pass` of this geometry on a problem of shape `s`.
    pub fn fits(&self, s: &ConvShape, pass: Pass, c: Candidate) -> bool {
        // The shared-memory kernels put their pixel tiles on the grid's y dimension.
        let grid_fits = |pixels: usize| pixels.div_ceil(SMEM_TILE) <= 65535;
        match c {
            Candidate::Direct => {
                let direct = s.cin == 1 && self.kh <= 3 && self.kw <= 3 && s.cout.is_multiple_of(4);
                direct && (pass != Pass::InputGrad || (self.stride.1 <= 2 && s.w.is_multiple_of(2)))
            }
            Candidate::Tile4 => s.cin.is_multiple_of(4) && s.cout.is_multiple_of(4),
            Candidate::Tile1 => true,
            Candidate::Shared => match pass {
                Pass::Forward => match self.out_hw(s.h, s.w) {
                    Ok((ho, wo)) => grid_fits(s.n * ho * wo),
                    Err(_) => false,
                },
                Pass::InputGrad => self.stride == (1, 1) && grid_fits(s.n * s.h * s.w),
                Pass::WeightGrad => true,
            },
        }
    }

    /// The candidates that can run `pass` on a problem of shape `s`, in [`Candidate::ALL`]'s
    /// order (never empty: [`Candidate::Tile1`] runs anything).
    pub fn candidates(&self, s: &ConvShape, pass: Pass) -> Vec<Candidate> {
        Candidate::ALL
            .into_iter()
            .filter(|&c| self.fits(s, pass, c))
            .collect()
    }

    /// The candidate the launchers run for `pass` on an adapter of `kind`.
    /// - CPU adapters run the direct kernels where they fit: with one input channel and at most
    ///   9 taps the GEMM's reduction is too short to pay for its tile's loads and epilogue.
    /// - GPUs run the shared-memory GEMM, except where its tile would stay mostly empty: a
    ///   forward reduction shorter than two staged slices, an input gradient with fewer than 4
    ///   input channels (one channel fills 1 of the tile's 64 columns), and strided input
    ///   gradients, which it does not run. On GPUs the direct kernels' 288 weights per invocation
    ///   spill from registers and their few long runs leave most of the chip idle.
    /// - Otherwise the register tiles, vec4 where the channel counts allow (the register tiles
    ///   spill on GPUs, but beat a shared tile that would stay mostly empty).
    pub fn choose(&self, kind: AdapterKind, s: &ConvShape, pass: Pass) -> Candidate {
        let fits = |c| self.fits(s, pass, c);
        let fills_shared_tile = match pass {
            Pass::Forward => self.kh * self.kw * s.cin >= 2 * SMEM_SLICE,
            Pass::InputGrad => s.cin >= 4,
            Pass::WeightGrad => true,
        };
        match kind {
            AdapterKind::Cpu if fits(Candidate::Direct) => Candidate::Direct,
            AdapterKind::Gpu if fits(Candidate::Shared) && fills_shared_tile => Candidate::Shared,
            _ if fits(Candidate::Tile4) => Candidate::Tile4,
            _ => Candidate::Tile1,
        }
    }
}
