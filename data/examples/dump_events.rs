//! Prints the header and the model events of a recording (lbrprof.data or perf.data), one
//! per line, for debugging the readers: `cargo run -p lbrprof-data --example dump_events FILE`.
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: dump_events FILE");
        std::process::exit(2);
    };
    let input = match lbrprof_data::input::open_any(std::path::Path::new(&path)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    println!("{:?}", input.header());
    for ev in input {
        match ev {
            Ok(ev) => println!("{ev:?}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    }
}
