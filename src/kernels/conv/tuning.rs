//! Convolution passes under autotuning: the shape class a pass is keyed by, the launchers' pick
//! (the tuned choice where it fits, else [`Conv2d::choose`]) and the timing of every candidate.

use rand::{Rng, SeedableRng};

use super::{Candidate, Conv2d, ConvShape, Forward, InputGrad, Pass, WeightGrad};
use crate::error::{Error, Result};
use crate::gpu::tune::{time_candidates, Budget, Trial};
use crate::gpu::Gpu;
use crate::memory::{Arena, Tensor};

/// The kernel family's name in the tuning cache.
pub const FAMILY: &str = "conv";

/// The shape class tuning keys a pass by: everything that decides which candidates fit and how
/// fast they run, e.g. `Forward 256x28x28x1 cout 16 k3x3 s1x1 p1x1 room 0`. `room` is how many
/// partial weight gradients the caller's scratch holds (0 for the other passes).
pub fn shape_class(g: &Conv2d, s: &ConvShape, pass: Pass, room: usize) -> String {
    format!(
        "{pass:?} {}x{}x{}x{} cout {} k{}x{} s{}x{} p{}x{} room {room}",
        s.n, s.h, s.w, s.cin, s.cout, g.kh, g.kw, g.stride.0, g.stride.1, g.pad.0, g.pad.1
    )
}

/// Reads what [`shape_class`] wrote.
fn parse_class(class: &str) -> Result<(Conv2d, ConvShape, Pass, usize)> {
    let bad = || Error::Config(format!("malformed conv shape class `{class}`"));
    let sizes = |text: &str| -> Result<Vec<usize>> {
        text.split('x')
            .map(|v| v.parse().map_err(|_| bad()))
            .collect()
    };
    let words: Vec<&str> = class.split_whitespace().collect();
    let [pass, nhwc, "cout", cout, k, s, p, "room", room] = words[..] else {
        return Err(bad());
    };
    let pass = Pass::ALL
        .into_iter()
        .find(|p| format!("{p:?}") == pass)
        .ok_or_else(bad)?;
    let pair = |word: &str, prefix: char| -> Result<(usize, usize)> {
        match sizes(word.strip_prefix(prefix).ok_or_else(bad)?)?[..] {
            [a, b] => Ok((a, b)),
            _ => Err(bad()),
        }
    };
    let (kh, kw) = pair(k, 'k')?;
    let g = Conv2d {
        kh,
        kw,
        stride: pair(s, 's')?,
        pad: pair(p, 'p')?,
    };
    let [n, h, w, cin] = sizes(nhwc)?[..] else {
        return Err(bad());
    };
    let cout = cout.parse().map_err(|_| bad())?;
    let room = room.parse().map_err(|_| bad())?;
    Ok((g, ConvShape { n, h, w, cin, cout }, pass, room))
}

impl Conv2d {
    /// The candidate the launchers run for `pass` on `s` with `room` partial weight gradients of
    /// scratch: the tuned choice where there is one that fits, else [`Conv2d::choose`]'s.
    pub fn pick(&self, gpu: &Gpu, s: &ConvShape, pass: Pass, room: usize) -> Candidate {
        let tuned = gpu
            .tuning()
            .choice(FAMILY, &shape_class(self, s, pass, room))
            .map(str::to_string);
        tuned
            .and_then(|name| {
                self.candidates(s, pass)
                    .into_iter()
                    .find(|c| format!("{c:?}") == name)
            })
            .unwrap_or_else(|| self.choose(gpu.kind(), s, pass))
    }
}

/// Times every candidate that can run the pass of shape class `class` ([`shape_class`]) on random
/// operands, each launch in a submission of its own timed by [`Gpu::sync_timed`].
pub fn time(gpu: &Gpu, class: &str, budget: Budget) -> Result<Vec<Trial>> {
    let (g, s, pass, room) = parse_class(class)?;
    let (ho, wo) = g.out_hw(s.h, s.w)?;
    let mut arena = Arena::for_gpu("tuning", gpu);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut random = |arena: &mut Arena, shape: [usize; 4]| -> Result<Tensor> {
        let data: Vec<f32> = (0..shape.iter().product())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        arena.upload(gpu, shape, &data)
    };
    let x = random(&mut arena, [s.n, s.h, s.w, s.cin])?;
    let w = random(&mut arena, [s.cout, g.kh, g.kw, s.cin])?;
    let y = random(&mut arena, [s.n, ho, wo, s.cout])?;
    let scratch = (room > 0)
        .then(|| arena.tensor(gpu, [room * w.numel()]))
        .transpose()?;
    let list = g.candidates(&s, pass);
    let names: Vec<String> = list.iter().map(|c| format!("{c:?}")).collect();
    let times = time_candidates(&names, budget, |name| {
        let c = list
            .iter()
            .copied()
            .find(|c| format!("{c:?}") == name)
            .ok_or_else(|| Error::Config(format!("no conv candidate `{name}`")))?;
        match pass {
            Pass::Forward => Forward {
                x: &x,
                w: &w,
                bias: None,
                y: &y,
                relu: false,
            }
            .run(gpu, &g, Some(c))?,
            Pass::InputGrad => InputGrad {
                dy: &y,
                w: &w,
                dx: &x,
                accumulate: false,
            }
            .run(gpu, &g, Some(c))?,
            Pass::WeightGrad => WeightGrad {
                x: &x,
                dy: &y,
                dw: &w,
                scratch: scratch.as_ref(),
                accumulate: false,
            }
            .run(gpu, &g, Some(c))?,
        }
        gpu.sync_timed()
    });
    arena.free(gpu)?;
    let flops = g.flops(s.n, s.h, s.w, s.cin, s.cout);
    Ok(Trial::ranked(FAMILY, class, times?, flops))
}
