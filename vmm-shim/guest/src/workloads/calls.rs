//! `calls`: direct, recursive and indirect calls.
//!
//! `fib(depth)` recursively (direct recursive calls), then `n` rounds of an indirect call
//! through a table of four functions chosen by the round number, each of which makes a
//! direct call to a shared helper.

#[inline(never)]
pub fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1).wrapping_add(fib(n - 2))
    }
}

#[inline(never)]
fn mix(x: u64) -> u64 {
    (x ^ (x >> 17)).wrapping_mul(0xff51_afd7_ed55_8ccd)
}

#[inline(never)]
fn op_add(x: u64) -> u64 {
    mix(x.wrapping_add(1))
}

#[inline(never)]
fn op_mul(x: u64) -> u64 {
    mix(x.wrapping_mul(3))
}

#[inline(never)]
fn op_xor(x: u64) -> u64 {
    mix(x ^ 0x5555)
}

#[inline(never)]
fn op_rot(x: u64) -> u64 {
    mix(x.rotate_left(13))
}

/// The indirect-call table.
pub static OPS: [fn(u64) -> u64; 4] = [op_add, op_mul, op_xor, op_rot];

#[inline(never)]
pub fn run(n: u64, depth: u64) -> (u64, u64) {
    let f = fib(depth);
    let ops = core::hint::black_box(&OPS);
    let mut acc = f;
    for i in 0..n {
        acc = acc.wrapping_mul(31).wrapping_add(ops[(i % 4) as usize](i));
    }
    (f, acc)
}
