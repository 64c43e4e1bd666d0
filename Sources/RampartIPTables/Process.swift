import Foundation
import RampartSystem

/// A failed iptables/ipset command: which one, and what it said.
public struct IPTError: Error, CustomStringConvertible, Sendable {
    public var command: String
    public var status: Int32
    public var message: String
    public var description: String { "\(command) failed (status \(status)): \(message.trimmingCharacters(in: .whitespacesAndNewlines))" }
}

/// Runs a tool with RampartSystem's `Command`, inside a named network namespace if one is
/// given: the child is started from a thread that has entered the namespace, so no
/// `ip netns exec` (tens of milliseconds) sits in between.
struct Runner: Sendable {
    var netns: String?

    func run(_ args: [String], input: String? = nil) throws -> CommandOutput {
        let command = Command(args, input: input.map { .text($0) } ?? .none,
                              in: netns.map { .named($0) } ?? .current)
        do {
            return try command.run()
        } catch {
            throw IPTError(command: command.description, status: -1, message: error.description)
        }
    }

    func check(_ args: [String], input: String? = nil) throws -> String {
        let r = try run(args, input: input)
        guard r.status == 0 else { throw IPTError(command: args.joined(separator: " "), status: r.status, message: r.stderr) }
        return r.stdout
    }
}
