//! The `hinan` appliance binary. A thin main: parsing and wiring only.

use clap::Parser;

/// hinan: network-layer failover appliance for campus private clouds.
#[derive(Debug, Parser)]
#[command(name = "hinan", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "this build of hinan has no appliance services yet; see README.md for what the lab (`hinan-lab`) can do"
    )
}
