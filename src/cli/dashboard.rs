use anyhow::{bail, Result};
#[derive(clap::Args)]
pub struct DashboardArgs {}
#[derive(clap::Args)]
pub struct PlotArgs {}
pub fn run_dashboard(_a: DashboardArgs) -> Result<()> {
    bail!("dashboard: not built yet")
}
pub fn run_plot(_a: PlotArgs) -> Result<()> {
    bail!("plot: not built yet")
}
