// HTTP server and client in one node process for tests/linux.rs: 20 requests over
// loopback TCP (sockets, epoll, non-blocking accept and connect).
const http = require('http');
const srv = http.createServer((req, res) => { res.end('hello ' + req.url); });
srv.listen(0, '127.0.0.1', async () => {
  const port = srv.address().port;
  let ok = 0;
  for (let i = 0; i < 20; i++) {
    const body = await new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: '/r' + i }, r => {
        let b = ''; r.on('data', d => b += d); r.on('end', () => resolve(b));
      }).on('error', reject);
    });
    if (body === 'hello /r' + i) ok++;
  }
  console.log('ok', ok);
  srv.close();
});
