//! Tiled attention-free kernels: when the profile's largest surface forces fewer sequences
//! per evaluation than the batch, the kernels still match the fp32 CPU kernels within the
//! fp16 tolerance (both pipelines, GQA model, padded dims and sequence).

use anetrain::ane::bringup::{self, CheckSpec, TOLERANCE};
use anetrain::ane::chip::Profile;
use anetrain::ane::device::Device;
use anetrain::ane::fit;
use anetrain::ane::sim::SimDevice;
use anetrain::ane::Pipeline;
use anetrain::model::Config;

#[test]
fn tiled_kernels_match_the_cpu() {
    let c = Config::preset("stories260k").unwrap();
    let profile = Profile::named("conservative,max-surface-mb=1").unwrap();
    let factory = |p: &Profile| -> anyhow::Result<Box<dyn Device>> {
        Ok(Box::new(SimDevice::with_profile(p.clone())))
    };
    for pipeline in [Pipeline::Static, Pipeline::Dynamic] {
        let plan = fit::plan(&c, 8, 48, pipeline, &profile, 1000).unwrap();
        // Tiled (fewer sequences per evaluation than the batch) and padded (48 → 64).
        assert!(plan.geo.chunk < 8, "{pipeline}: chunk {}", plan.geo.chunk);
        assert_eq!((plan.geo.seq_real, plan.geo.seq), (48, 64));
        let spec = CheckSpec {
            model: "stories260k".into(),
            cfg: c.clone(),
            batch: 8,
            seq: 48,
            pipeline,
            profile: profile.clone(),
            budget: Some(1000),
            evals: 1,
            simulated: true,
            device: &factory,
        };
        let rep = bringup::run(&spec, &mut |_| {}).unwrap();
        assert_eq!(rep.kernels.len(), 6, "{pipeline}: {:?}", rep.compare_error);
        for k in &rep.kernels {
            eprintln!(
                "{pipeline} {}: {:.2e} ({})",
                k.kernel, k.max_rel_err, k.worst_output
            );
            assert!(
                k.max_rel_err < TOLERANCE / 2.0,
                "{pipeline} {}: {}",
                k.kernel,
                k.max_rel_err
            );
            assert_ne!(k.runs_on, "cpu");
        }
        assert_eq!(rep.verdict, "ok");
    }
}
