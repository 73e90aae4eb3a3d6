// Fixture for tests/symbolize_llvm.rs: a Rust program (trait objects, sorting, hash and
// B-tree maps, formatting) to compare symbolizers on many addresses of it and of std.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
trait Shape {
    fn area(&self) -> f64;
    fn name(&self) -> String;
}
struct Sq(f64);
struct Ci(f64);
impl Shape for Sq {
    fn area(&self) -> f64 {
        self.0 * self.0
    }
    fn name(&self) -> String {
        format!("sq{}", self.0)
    }
}
impl Shape for Ci {
    fn area(&self) -> f64 {
        3.14 * self.0 * self.0
    }
    fn name(&self) -> String {
        format!("ci{}", self.0)
    }
}
fn main() {
    let mut v: Vec<Box<dyn Shape>> = Vec::new();
    let mut x: u64 = 88172645463325252;
    for i in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x & 1 == 0 {
            v.push(Box::new(Sq(i as f64)))
        } else {
            v.push(Box::new(Ci(i as f64)))
        }
    }
    v.sort_by(|a, b| a.area().partial_cmp(&b.area()).unwrap());
    let mut m: HashMap<String, f64> = HashMap::new();
    let mut b: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for s in &v {
        *m.entry(s.name()).or_default() += s.area();
        b.entry(s.area() as u64 % 17).or_default().push(s.name());
    }
    let mut out = String::new();
    for (k, v) in &b {
        let _ = write!(out, "{k}:{} ", v.len());
    }
    println!("{} {} {}", m.len(), out, std::env::args().count());
}
