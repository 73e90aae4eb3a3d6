// Fixture for tests/symbolize.rs: C++ names to demangle.
namespace ns {
template <typename T> struct Box {
	T value;
	__attribute__((noinline)) T twice() const { return value + value; } // LINE:twice
};
__attribute__((noinline)) int run(int x) { // LINE:run
	Box<int> b{x};
	return b.twice();
}
} // namespace ns

int main(int argc, char **) { return ns::run(argc) & 1; }
