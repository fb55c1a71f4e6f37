//! The encoder presets: the parameter count memory validation computes without building the
//! encoder is the built encoder's, for the small encoder and resnet18.

mod common;

use contrastive::nn::{Encoder, Preset, StoreBuilder};

#[test]
fn parameter_count_matches_the_built_encoder() {
    for (preset, mult) in [(Preset::Small, 1.0), (Preset::Resnet18, 1.0 / 16.0)] {
        let config = preset.config((12, 10, 3), &[4, 6], 1, mult);
        let mut p = StoreBuilder::new(0);
        let mut b = StoreBuilder::new(0);
        Encoder::new(&mut p, &mut b, &config).unwrap();
        let gpu = common::gpu();
        let built = p.build(&gpu, "p", false).unwrap().count();
        assert_eq!(config.parameter_count(), built as u128, "{preset:?}");
    }
}
