// Fixture for tests/symbolize.rs: Rust names to demangle (legacy and v0 mangling).
pub mod inner {
    #[inline(never)]
    pub fn known_function(x: u64) -> u64 { // LINE:known_function
        x.wrapping_mul(31) ^ 7
    }

    pub struct Thing<T>(pub T);

    impl<T: Copy + Into<u64>> Thing<T> {
        #[inline(never)]
        pub fn generic_method(&self) -> u64 { // LINE:generic_method
            known_function(self.0.into())
        }
    }
}

fn main() {
    let n = std::env::args().count() as u32;
    println!("{}", inner::Thing(n).generic_method());
}
