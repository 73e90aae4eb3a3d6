// A small Java program for tests/linux_compat.rs: the JIT, the collections, a thread pool.
import java.util.*;
import java.util.concurrent.*;
public class LinuxJava {
    public static void main(String[] a) throws Exception {
        long s = 0;
        for (int i = 0; i < 20_000_000; i++) s += i % 7;
        Map<String,Integer> m = new TreeMap<>();
        for (String w : "the quick brown fox jumps over the lazy dog the end".split(" ")) m.merge(w, 1, Integer::sum);
        ExecutorService ex = Executors.newFixedThreadPool(3);
        List<Future<Long>> fs = new ArrayList<>();
        for (int t = 0; t < 3; t++) { final int k = t; fs.add(ex.submit(() -> { long x = 0; for (int i = 0; i < 1000000; i++) x += i ^ k; return x; })); }
        long tot = 0; for (Future<Long> f : fs) tot += f.get();
        ex.shutdown();
        System.out.println("sum " + s + " words " + m + " threads " + tot);
    }
}
