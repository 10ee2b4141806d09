//! Measures in-memory generation speed (no disk IO): `cargo run --release --example synth_speed -- llama-1b bf16`.

use std::time::Instant;

use ultradelta_io::DType;
use ultradelta_synth::{tensor_bytes, tensor_specs, Shape, SynthConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let shape: Shape = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("bert-base")
        .parse()?;
    let dtype = args
        .get(2)
        .and_then(|s| DType::parse(&s.to_uppercase()))
        .unwrap_or(DType::BF16);
    let limit: usize = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let cfg = SynthConfig {
        dtype,
        ..SynthConfig::new(shape)
    };
    let start = Instant::now();
    let mut bytes = 0u64;
    for (name, _) in tensor_specs(shape).into_iter().take(limit) {
        let (b, f) = tensor_bytes(&cfg, &name)?;
        bytes += (b.len() + f.map_or(0, |f| f.len())) as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{shape} {}: {:.2} GB in {secs:.2} s = {:.0} MB/s (base + fine-tuned bytes)",
        dtype.name(),
        bytes as f64 / 1e9,
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
