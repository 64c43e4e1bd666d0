import Foundation

/// A network namespace made for one test (or benchmark) and removed when it is released.
/// Names carry the process id and a counter, so parallel tests never share one, and the
/// machine's own namespace is never the target.
public final class TestNamespace: Sendable {
    public let name: String
    private static let counter = Counter()

    /// Creates `rt-<prefix>-<pid>-<n>` (with loopback up).
    public init(prefix: String = "t") throws {
        name = "rt-\(prefix)-\(getpid())-\(Self.counter.next())"
        try runCommand(["ip", "netns", "add", name], check: true)
        try runCommand(["ip", "-n", name, "link", "set", "lo", "up"], check: true)
    }

    deinit { removeNamespace(name) }

    /// Runs a command inside the namespace.
    @discardableResult
    public func run(_ arguments: [String], input: String? = nil, check: Bool = false) throws -> CommandResult {
        try runCommand(["ip", "netns", "exec", name] + arguments, input: input, check: check)
    }

    /// `nft` inside the namespace (the test oracle).
    @discardableResult
    public func nft(_ arguments: String..., input: String? = nil, check: Bool = true) throws -> CommandResult {
        try run(["nft"] + arguments, input: input, check: check)
    }

    /// `nft -j list ruleset` parsed: the list of objects under `nftables`.
    public func nftJSON() throws -> [[String: Any]] {
        let out = try nft("-j", "list", "ruleset").stdout
        guard let top = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any],
              let items = top["nftables"] as? [[String: Any]] else {
            throw HarnessError("unexpected nft -j output: \(out.prefix(200))")
        }
        return items
    }
}

private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> Int {
        lock.lock(); defer { lock.unlock() }
        value += 1
        return value
    }
}

/// Removes network namespace `name` (`ip netns del`). A removal can fail for a moment (EBUSY
/// while another `ip netns exec` in its own mount namespace still holds the bind mount): it is
/// tried again for about two seconds, and a namespace that stays is named on standard error
/// instead of being left behind silently (a leftover demo fabric failed CI once).
public func removeNamespace(_ name: String) {
    var last = ""
    for attempt in 0..<20 {
        guard let r = try? runCommand(["ip", "netns", "del", name]) else { return }
        if r.succeeded { return }
        // Already gone (removed by someone else, or never made): nothing to do.
        if !FileManager.default.fileExists(atPath: "/run/netns/\(name)") { return }
        last = r.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        if attempt < 19 { usleep(100_000) }
    }
    FileHandle.standardError.write(Data("warning: network namespace \(name) could not be removed: \(last)\n".utf8))
}
