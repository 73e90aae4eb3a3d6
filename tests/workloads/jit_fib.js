// A JIT-compiled hot loop for tests/jit.rs: with --perf-basic-prof, node writes
// /tmp/perf-PID.map naming its generated code.
function fib(n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}
function hotLoop() {
  let s = 0;
  for (let i = 0; i < 30; i++) s += fib(24);
  return s;
}
let t = 0;
for (let k = 0; k < 20; k++) t += hotLoop();
console.log(t);
