// time.Now() N times (default 1 000 000): Go's runtime reads the clock through the vDSO,
// which it finds by symbol name and version LINUX_2.6 (tests/linux_vdso.rs).
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	iters := 1000000
	if len(os.Args) > 1 {
		iters, _ = strconv.Atoi(os.Args[1])
	}
	start := time.Now()
	var n int64
	for i := 0; i < iters; i++ {
		n += time.Now().UnixNano() & 1
	}
	fmt.Println(n >= 0, time.Since(start) > 0)
}
