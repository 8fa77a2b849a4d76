//! Builds the unwind table of each ELF file given and prints its size,
//! what it covers and how long it took:
//! `cargo run --release -p kscope-unwind --example table -- FILE...`

use std::time::Instant;

fn main() {
    for path in std::env::args().skip(1) {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let t = Instant::now();
        match kscope_unwind::Table::from_elf(&data) {
            Ok(table) => println!(
                "{path}: {} rows in {:.1} ms; {:?}",
                table.rows.len(),
                t.elapsed().as_secs_f64() * 1e3,
                table.stats
            ),
            Err(e) => println!("{path}: {e}"),
        }
    }
}
