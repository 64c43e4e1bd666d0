import RampartSystem

/// Runs a program and waits for it, output discarded: for timing external baselines (`nft`,
/// `iptables-restore`). With a namespace, the child is started from a thread inside it, so it
/// runs there without an `ip netns exec` in between. Returns the exit status.
@discardableResult
public func spawnQuiet(_ arguments: [String], in namespace: NetworkNamespace = .current,
                       stdinPath: String? = nil) throws -> Int32 {
    try Command(arguments, input: stdinPath.map { .file($0) } ?? .none, output: .discard, in: namespace).run().status
}
