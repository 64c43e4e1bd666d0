import Foundation
import RampartSystem

/// `ip -n NAMESPACE -batch -`: runs `lines` inside a named namespace in one process, never in
/// the caller's own (the namespace is always given). Throws `WiringError` with `ip`'s message.
public func runIPBatch(in namespace: String, _ lines: [String]) throws {
    guard !lines.isEmpty else { return }
    try runChecked(["ip", "-n", namespace, "-batch", "-"], input: lines.joined(separator: "\n") + "\n")
}

/// Runs a command (no shell), started in `namespace`, and throws `WiringError` unless it
/// exits 0.
@discardableResult
public func runChecked(_ arguments: [String], input: String? = nil, in namespace: NetworkNamespace = .current) throws -> CommandOutput {
    let result: CommandOutput
    do {
        result = try Command(arguments, input: input.map { .text($0) } ?? .none, in: namespace, timeout: 30).run()
    } catch {
        throw WiringError("\(arguments.joined(separator: " ")): \(error)")
    }
    guard result.succeeded else {
        let message = result.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        throw WiringError("\(arguments.joined(separator: " ")) exited \(result.status): \(message)")
    }
    return result
}

/// A wiring step that failed: the command and what it said.
public struct WiringError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
