// Event loop for tests/linux.rs: timers, a file read on libuv's thread pool (epoll,
// eventfd, futexes); prints only what is deterministic.
const fs = require('fs');
let n = 0;
const t = setInterval(() => { n++; if (n === 5) { clearInterval(t); done(); } }, 10);
function done() {
  fs.readFile(__filename, 'utf8', (err, s) => {
    if (err) throw err;
    setTimeout(() => console.log('ticks', n, 'bytes', s.length, 'sum', [1,2,3].reduce((a,b)=>a+b)), 5);
  });
}
