use anyhow::{bail, Result};
#[derive(clap::Args)]
pub struct TrainArgs {}
#[derive(clap::Args)]
pub struct ExportArgs {}
#[derive(clap::Args)]
pub struct EvalArgs {}
#[derive(clap::Args)]
pub struct GradArgs {}
#[derive(clap::Args)]
pub struct BenchArgs {}
pub fn run_train(_a: TrainArgs) -> Result<()> {
    bail!("train: not built yet")
}
pub fn run_export(_a: ExportArgs) -> Result<()> {
    bail!("export: not built yet")
}
pub fn run_eval(_a: EvalArgs) -> Result<()> {
    bail!("eval: not built yet")
}
pub fn run_grad(_a: GradArgs) -> Result<()> {
    bail!("grad: not built yet")
}
pub fn run_bench(_a: BenchArgs) -> Result<()> {
    bail!("bench: not built yet")
}
