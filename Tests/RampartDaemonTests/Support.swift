import RampartBackends
import Foundation
import RampartCore
import RampartDaemon
import RampartHarness
import RampartIPTables
import RampartNetlink
import RampartStore
import RampartTestSupport
import Testing

/// The fake kernel, shared with the daemon's worker thread (the tests read it only while idle).
final class FakeKernel: @unchecked Sendable {
    let nft = RecordingNFTables()
}

/// The parent of every directory this test process makes, removed when the process exits (a
/// test that fails half-way leaves nothing behind either).
let testRunDirectory: String = {
    let p = FileManager.default.temporaryDirectory.appendingPathComponent("rampartd-tests-\(getpid())").path
    try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    chmod(p, 0o755)
    atexit {
        let p = FileManager.default.temporaryDirectory.appendingPathComponent("rampartd-tests-\(getpid())").path
        try? FileManager.default.removeItem(atPath: p)
    }
    return p
}()

/// A fresh directory, 0755 and root's whatever the umask (the daemon refuses a store or socket
/// directory that others can write).
func tempDir(_ tag: String) -> String {
    let p = (testRunDirectory as NSString).appendingPathComponent("\(tag)-\(UUID().uuidString.prefix(8))")
    try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    chmod(p, 0o755)
    return p
}

/// An NFTablesClient that can be told to fail (reads, commits, generation queries) or to hold
/// the worker (a closed gate blocks `generation` and `commit` until opened).
final class ControlledClient: NFTablesClient, @unchecked Sendable {
    let inner: NFTablesClient
    private let lock = NSCondition()
    private var _failReads = false, _failAll = false, _gateOpen = true, _blocked = 0
    init(_ inner: NFTablesClient) { self.inner = inner }

    var failReads: Bool { get { lock.withLock { _failReads } } set { lock.withLock { _failReads = newValue } } }
    var failAll: Bool { get { lock.withLock { _failAll } } set { lock.withLock { _failAll = newValue } } }
    func closeGate() { lock.withLock { _gateOpen = false } }
    func openGate() { lock.lock(); _gateOpen = true; lock.broadcast(); lock.unlock() }
    /// Calls waiting at the closed gate.
    var blocked: Int { lock.withLock { _blocked } }

    private func pass() throws(NetlinkError) {
        lock.lock()
        _blocked += 1
        while !_gateOpen { lock.wait() }
        _blocked -= 1
        let fail = _failAll
        lock.unlock()
        if fail { throw NetlinkError.protocolError("injected failure") }
    }

    func generation() throws(NetlinkError) -> UInt32 {
        try pass()
        return try inner.generation()
    }

    func commit(_ batch: Batch, expectedGeneration: UInt32?) throws(NetlinkError) -> CommitResult {
        try pass()
        return try inner.commit(batch, expectedGeneration: expectedGeneration)
    }

    func readTable(family: NFTFamily, name: String) throws(NetlinkError) -> TableSnapshot? {
        if failReads || failAll { throw NetlinkError.protocolError("injected read failure") }
        return try inner.readTable(family: family, name: name)
    }

    func readRules(family: NFTFamily, table: String, chain: String) throws(NetlinkError) -> [NFTRule]? {
        if failReads || failAll { throw NetlinkError.protocolError("injected read failure") }
        return try inner.readRules(family: family, table: table, chain: chain)
    }
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(_ seconds: Double = 5, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        Thread.sleep(forTimeInterval: 0.02)
    }
    return try condition()
}

/// Registers `host` in the store (an import of its empty document).
func register(_ host: String, in store: SQLiteStore) throws {
    _ = try store.importDocument(Document(host: host))
}

func ip(_ s: String) -> IPAddress { IPAddress(s)! }

func rule(_ json: String, _ group: String, refs: [String] = []) throws -> Rule {
    try RulesCodec.parseRule(json, group: group, references: refs)
}

/// Runs `body(i)` for i in 0..<n, each on a thread of its own, and returns the results in order.
func runOnThreads<T: Sendable>(_ n: Int, _ body: @escaping @Sendable (Int) -> T) -> [T] {
    let box = ResultBox<T>(n)
    let group = DispatchGroup()
    for i in 0..<n {
        group.enter()
        let t = Thread {
            let r = body(i)
            box.lock.lock(); box.results[i] = r; box.lock.unlock()
            group.leave()
        }
        t.start()
    }
    group.wait()
    return box.results.map { $0! }
}

final class ResultBox<T>: @unchecked Sendable {
    var results: [T?]
    let lock = NSLock()
    init(_ n: Int) { results = Array(repeating: nil, count: n) }
}

/// Runs the probes at once and expects each to pass or be dropped as given.
func expectProbes(_ topo: some ProbeRunning, _ cases: [(Probe, Bool)], sourceLocation: SourceLocation = #_sourceLocation) throws {
    let results = try topo.probe(cases.map(\.0))
    let wrong = zip(results, cases).filter { $0.passed != $1.1 }
    #expect(wrong.isEmpty, "unexpected: \(wrong.map { "\($0.0.probe) \($0.0.passed ? "passed" : "was dropped")" })", sourceLocation: sourceLocation)
}

/// Whether the kernel of namespace `netns` holds exactly `document` compiled (nothing pending).
func kernelMatches(_ document: Document, netns: String, backend: KernelBackend = .nftables) throws -> Bool {
    try backend.target(netns: netns).factory().pending(to: Compiler.compile(document)).isEmpty
}

/// The backends the daemon's kernel and traffic tests run against: the same store, refreshes,
/// probes and expectations for each; only how a test damages the kernel differs.
enum KernelBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case nftables
    case iptablesLegacy = "iptables-legacy"
    case iptablesNFT = "iptables-nft"

    var testDescription: String { rawValue }

    /// The daemon's backend in namespace `netns` (routed topology).
    func target(netns: String) -> BackendChoice {
        switch self {
        case .nftables: BackendChoice(.nftables, netns: netns)
        case .iptablesLegacy: BackendChoice(.iptables, netns: netns, iptablesVariant: .legacy)
        case .iptablesNFT: BackendChoice(.iptables, netns: netns, iptablesVariant: .nft)
        }
    }

    /// `rampartd`'s options selecting this backend.
    var options: [String] {
        switch self {
        case .nftables: []
        case .iptablesLegacy: ["--backend", "iptables", "--iptables", "legacy"]
        case .iptablesNFT: ["--backend", "iptables", "--iptables", "nft"]
        }
    }

    /// Someone empties the web group's ingress chain by hand.
    func flushWebIngress(_ ns: TestNamespace) throws {
        switch self {
        case .nftables: try ns.nft("flush", "chain", "inet", "rampart", "gin-web")
        case .iptablesLegacy, .iptablesNFT:
            let v = self == .iptablesLegacy ? "legacy" : "nft"
            for tool in ["iptables-\(v)", "ip6tables-\(v)"] { try ns.run([tool, "-w", "-F", "rp-gi-web"], check: true) }
        }
    }
}
