//! The Neural Engine envelope: every program the trainer would compile, for every preset,
//! both pipelines, a grid of batch sizes and sequence lengths, under every chip profile,
//! passes the strict checker — or the planner refuses the geometry before compiling, naming
//! the rule and what to pass instead.

use anetrain::ane::check;
use anetrain::ane::chip::Profile;
use anetrain::ane::fit::{self, Refusal};
use anetrain::ane::mil::kernels::{generate, kernel_set, LayerWeights, Pipeline};
use anetrain::ane::sim::parse;
use anetrain::kernels::ops::Rope;
use anetrain::model::{Config, Params};

#[test]
fn every_program_of_the_grid_passes_strict_mode_or_is_refused_up_front() {
    let (mut checked, mut programs, mut refused) = (0, 0, 0);
    for preset in [
        "stories260k",
        "stories15m",
        "stories42m",
        "stories110m",
        "qwen3-0.6b-shape",
    ] {
        let c = Config::preset(preset).unwrap();
        let mut zeros: Option<Params> = None;
        for pipeline in [Pipeline::Static, Pipeline::Dynamic] {
            for batch in [1, 8, 24] {
                for seq in [64, 100, 256, 1024] {
                    if seq > c.seq_len {
                        continue;
                    }
                    for profile in Profile::all() {
                        let what = format!("{preset} {pipeline} b{batch} s{seq} {}", profile.name);
                        let plan = match fit::plan(
                            &c,
                            batch,
                            seq,
                            pipeline,
                            &profile,
                            profile.compile_budget,
                        ) {
                            Ok(p) => p,
                            Err(e) => {
                                let r = e
                                    .downcast_ref::<Refusal>()
                                    .unwrap_or_else(|| panic!("{what}: not a refusal: {e:#}"));
                                assert!(r.rule.starts_with('C'), "{what}: {r}");
                                assert!(
                                    ["--seq", "--pipeline", "--backend cpu", "--ane-profile"]
                                        .iter()
                                        .any(|h| r.detail.contains(h)),
                                    "{what}: a refusal must say what to pass instead: {r}"
                                );
                                refused += 1;
                                continue;
                            }
                        };
                        checked += 1;
                        let rope = Rope::new(c.head_dim, seq, c.rope_theta);
                        for k in kernel_set(pipeline) {
                            let w = (pipeline == Pipeline::Static && k.has_weights()).then(|| {
                                LayerWeights::from_params(
                                    zeros.get_or_insert_with(|| Params::zeros(&c)),
                                    0,
                                )
                            });
                            let p = generate(pipeline, k, &plan.geo, w.as_ref(), &rope)
                                .unwrap_or_else(|e| panic!("{what} {}: {e:#}", k.name()));
                            let ast = parse::parse(&p.text)
                                .unwrap_or_else(|e| panic!("{what} {}: {e:#}", k.name()));
                            let v = check::check(&ast, &profile);
                            assert!(
                                v.is_empty(),
                                "{what} {}: strict mode refuses:\n{}",
                                k.name(),
                                v.iter()
                                    .map(|v| v.to_string())
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            );
                            programs += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{checked} planned geometries ({programs} programs) pass strict mode; {refused} refused up front"
    );
    assert!(checked > 100 && refused > 0);
}

#[test]
fn the_default_train_geometry_passes_under_every_profile() {
    // `anetrain train --backend ane`: stories260k, batch 8, seq 256, dynamic pipeline.
    let c = Config::preset("stories260k").unwrap();
    let rope = Rope::new(c.head_dim, 256, c.rope_theta);
    for profile in Profile::all() {
        let plan = fit::plan(
            &c,
            8,
            256,
            Pipeline::Dynamic,
            &profile,
            profile.compile_budget,
        )
        .unwrap_or_else(|e| panic!("{}: {e:#}", profile.name));
        for k in kernel_set(Pipeline::Dynamic) {
            let p = generate(Pipeline::Dynamic, k, &plan.geo, None, &rope).unwrap();
            let v = check::check_text(&p.text, &p.weights, &profile).unwrap();
            assert!(v.is_empty(), "{} {}: {v:?}", profile.name, k.name());
        }
    }
}
