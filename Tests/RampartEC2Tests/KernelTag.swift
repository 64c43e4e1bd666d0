import Foundation
import Testing

// The same few lines in each test target that has kernel tests (RampartCoreTests,
// RampartStoreTests, RampartNFTablesTests, RampartIPTablesTests, RampartHarnessTests,
// RampartDaemonTests, RampartEC2Tests): a target
// cannot see another's test helpers, and a shared library importing Testing would link it into
// whatever else depends on that library.

extension Tag {
    /// Needs root and the kernel: network namespaces, nftables, iptables, ipset, conntrack, or
    /// file ownership. Only ever together with `.rootOnly`.
    @Tag static var kernel: Self
}

extension Trait where Self == ConditionTrait {
    /// Runs only as root; elsewhere the test is reported as skipped, with this reason. Goes
    /// with `.tags(.kernel)`: `@Suite(.tags(.kernel), .rootOnly)`.
    static var rootOnly: Self { .enabled(if: getuid() == 0, "needs root (the kernel's firewall, network namespaces or root-owned files); scripts/test runs it as root") }
}
