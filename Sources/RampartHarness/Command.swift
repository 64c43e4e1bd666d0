import RampartSystem

/// The outcome of running an external command (RampartSystem's).
public typealias CommandResult = CommandOutput

/// Errors of the harness: a command that had to succeed did not.
public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Runs a command (no shell) and collects its output. The harness uses external tools (`ip`,
/// `nft` as an independent oracle, probes); Rampart's own nftables path never does.
@discardableResult
public func runCommand(_ arguments: [String], input: String? = nil, check: Bool = false) throws -> CommandResult {
    let result = try Command(arguments, input: input.map { .text($0) } ?? .none).run()
    if check && !result.succeeded {
        throw HarnessError("\(arguments.joined(separator: " ")) exited \(result.status): \(result.stderr)")
    }
    return result
}
