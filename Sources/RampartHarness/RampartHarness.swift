/// RampartHarness: network-namespace fixtures for tests, benchmarks and the demo.
