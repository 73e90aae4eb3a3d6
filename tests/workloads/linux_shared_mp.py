"""Python's multiprocessing, for the Linux-personality tests: a Pool.map over a few
items, and a multiprocessing.Value guarded by its Lock incremented from two processes
(shared memory from an unlinked /dev/shm file, a process-shared semaphore: futexes
in shared memory). Every line must be the same natively and under lbrprof run --vm."""

import multiprocessing as mp
import sys


def square(x):
    return x * x


def bump(counter, n):
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


def main():
    mp.set_start_method("fork")
    with mp.Pool(2) as pool:
        print("pool.map:", pool.map(square, range(8)))
    counter = mp.Value("i", 0)
    n = 2000
    procs = [mp.Process(target=bump, args=(counter, n)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    print("value:", counter.value, "want", 2 * n,
          "exit codes", [p.exitcode for p in procs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
