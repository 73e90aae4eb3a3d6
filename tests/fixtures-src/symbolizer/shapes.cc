// Fixture for tests/symbolize_llvm.rs: a C++ program with templates, STL containers,
// lambdas, virtual calls and inlining at -O2, to compare symbolizers on many addresses.
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace shapes {
struct Shape {
	virtual ~Shape() = default;
	virtual double area() const = 0;
	virtual std::string name() const = 0;
};
struct Square : Shape {
	double s;
	explicit Square(double s) : s(s) {}
	double area() const override { return s * s; }
	std::string name() const override { return "square"; }
};
struct Circle : Shape {
	double r;
	explicit Circle(double r) : r(r) {}
	double area() const override { return 3.14159 * r * r; }
	std::string name() const override { return "circle"; }
};
} // namespace shapes

template <typename K, typename V> struct Table {
	std::map<K, V> m;
	void add(const K &k, const V &v) { m[k] += v; }
	V sum() const {
		V t{};
		for (auto &[k, v] : m)
			t += v;
		return t;
	}
};

static unsigned long long rng_state = 88172645463325252ULL;
static inline unsigned long long next_rand() {
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

int main(int argc, char **argv) {
	std::vector<std::unique_ptr<shapes::Shape>> v;
	for (int i = 0; i < 1000 + argc; i++) {
		if (next_rand() & 1)
			v.push_back(std::make_unique<shapes::Square>(i));
		else
			v.push_back(std::make_unique<shapes::Circle>(i));
	}
	std::sort(v.begin(), v.end(), [](auto &a, auto &b) { return a->area() < b->area(); });
	Table<std::string, double> t;
	std::unordered_map<std::string, int> counts;
	for (auto &s : v) {
		t.add(s->name(), s->area());
		counts[s->name()]++;
	}
	Table<int, long> ti;
	for (int i = 0; i < 100; i++)
		ti.add(next_rand() % 17, i);
	std::printf("%f %zu %ld %s\n", t.sum(), counts.size(), ti.sum(), argv[0]);
	return 0;
}
