//! f64 CPU references of the three convolution passes, for the tests.

use super::{Conv2d, ConvShape};

/// Calls `f(n, oh, ow, kh, kw, x_pixel_index)` for every output position and tap that lands
/// inside the input (padding taps contribute zero and are skipped).
fn for_each_tap(
    s: &ConvShape,
    g: &Conv2d,
    mut f: impl FnMut(usize, usize, usize, usize, usize, usize),
) {
    let (ho, wo) = g
        .out_hw(s.h, s.w)
        .expect("reference called with an invalid geometry");
    for n in 0..s.n {
        for oh in 0..ho {
            for ow in 0..wo {
                for kh in 0..g.kh {
                    let hi = (oh * g.stride.0 + kh) as isize - g.pad.0 as isize;
                    if hi < 0 || hi >= s.h as isize {
                        continue;
                    }
                    for kw in 0..g.kw {
                        let wi = (ow * g.stride.1 + kw) as isize - g.pad.1 as isize;
                        if wi < 0 || wi >= s.w as isize {
                            continue;
                        }
                        let xp = (n * s.h + hi as usize) * s.w + wi as usize;
                        f(n, oh, ow, kh, kw, xp);
                    }
                }
            }
        }
    }
}

/// CPU reference of [`super::forward`] in f64, returning `y` as `[N,Ho,Wo,Cout]`.
pub fn reference_forward(
    s: &ConvShape,
    g: &Conv2d,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f64> {
    let (ho, wo) = g
        .out_hw(s.h, s.w)
        .expect("reference called with an invalid geometry");
    let mut y = vec![0.0f64; s.n * ho * wo * s.cout];
    for_each_tap(s, g, |n, oh, ow, kh, kw, xp| {
        let yp = ((n * ho + oh) * wo + ow) * s.cout;
        for co in 0..s.cout {
            let wb = ((co * g.kh + kh) * g.kw + kw) * s.cin;
            let dot: f64 = (0..s.cin)
                .map(|ci| x[xp * s.cin + ci] as f64 * w[wb + ci] as f64)
                .sum();
            y[yp + co] += dot;
        }
    });
    for (i, v) in y.iter_mut().enumerate() {
        if let Some(b) = bias {
            *v += b[i % s.cout] as f64;
        }
        if relu {
            *v = v.max(0.0);
        }
    }
    y
}

/// CPU reference of [`super::backward_weight`] in f64: `dw` as `[Cout,KH,KW,Cin]` (`prev` is added when
/// accumulating).
pub fn reference_backward_weight(
    s: &ConvShape,
    g: &Conv2d,
    x: &[f32],
    dy: &[f32],
    prev: Option<&[f32]>,
) -> Vec<f64> {
    let (ho, wo) = g
        .out_hw(s.h, s.w)
        .expect("reference called with an invalid geometry");
    let mut dw: Vec<f64> = match prev {
        Some(p) => p.iter().map(|&v| v as f64).collect(),
        None => vec![0.0; s.cout * g.kh * g.kw * s.cin],
    };
    for_each_tap(s, g, |n, oh, ow, kh, kw, xp| {
        let yp = ((n * ho + oh) * wo + ow) * s.cout;
        for co in 0..s.cout {
            let wb = ((co * g.kh + kh) * g.kw + kw) * s.cin;
            for ci in 0..s.cin {
                dw[wb + ci] += dy[yp + co] as f64 * x[xp * s.cin + ci] as f64;
            }
        }
    });
    dw
}

/// CPU reference of [`super::backward_input`] in f64: `dx` as `[N,H,W,Cin]` (`prev` is added when
/// accumulating).
pub fn reference_backward_input(
    s: &ConvShape,
    g: &Conv2d,
    dy: &[f32],
    w: &[f32],
    prev: Option<&[f32]>,
) -> Vec<f64> {
    let (ho, wo) = g
        .out_hw(s.h, s.w)
        .expect("reference called with an invalid geometry");
    let mut dx: Vec<f64> = match prev {
        Some(p) => p.iter().map(|&v| v as f64).collect(),
        None => vec![0.0; s.n * s.h * s.w * s.cin],
    };
    for_each_tap(s, g, |n, oh, ow, kh, kw, xp| {
        let yp = ((n * ho + oh) * wo + ow) * s.cout;
        for co in 0..s.cout {
            let wb = ((co * g.kh + kh) * g.kw + kw) * s.cin;
            for ci in 0..s.cin {
                dx[xp * s.cin + ci] += dy[yp + co] as f64 * w[wb + ci] as f64;
            }
        }
    });
    dx
}
