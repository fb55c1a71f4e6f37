mod common;

use common::*;
use contrastive::kernels::elementwise::{self, Broadcast, Map};
use contrastive::kernels::ema;
use contrastive::Arena;

/// Three EMA dispatches and two fills over two submissions: the profile counts each kernel's
/// calls, times every one of them, and the results match an unprofiled run bit for bit.
#[test]
fn profile_times_every_dispatch_and_changes_no_result() {
    let gpu = gpu();
    let mut arena = Arena::for_gpu("test", &gpu);
    let n = 1003;
    let mut run = |profile: bool| -> Vec<u32> {
        let t = arena.upload(&gpu, [n], &rand_vec(n, 1)).unwrap();
        let s = arena.upload(&gpu, [n], &rand_vec(n, 2)).unwrap();
        let f = arena.tensor(&gpu, [n]).unwrap();
        if profile {
            gpu.begin_profile().unwrap();
        }
        for m in [0.9, 0.5, 0.1] {
            ema::ema(&gpu, t.region, s.region, m).unwrap();
        }
        gpu.flush().unwrap();
        for (alpha, acc) in [(1.0, false), (2.0, true)] {
            let fill = Map::Fill { alpha };
            elementwise::map(&gpu, fill, &f, &f, Broadcast::Full, &f, acc).unwrap();
        }
        if profile {
            let kernels = gpu.end_profile().unwrap();
            let calls: Vec<(&str, u64)> = kernels
                .iter()
                .map(|k| (k.kernel.as_str(), k.calls))
                .collect();
            assert_eq!(calls.len(), 2, "{kernels:?}");
            assert!(calls.contains(&("ema.wgsl::ema", 3)), "{kernels:?}");
            assert!(calls.contains(&("elementwise.wgsl::map", 2)), "{kernels:?}");
            assert!(kernels.iter().all(|k| k.seconds > 0.0), "{kernels:?}");
            assert!(kernels.windows(2).all(|w| w[0].seconds >= w[1].seconds));
        }
        let mut out: Vec<u32> = gpu.read(t.region).unwrap();
        out.extend(gpu.read::<u32>(f.region).unwrap());
        out
    };
    let plain = run(false);
    assert_eq!(run(true), plain);
    // Profile mode has ended: nothing more is collected.
    assert!(gpu.end_profile().unwrap().is_empty());
}
