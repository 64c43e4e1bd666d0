import RampartSystem
import ArgumentParser
import Foundation
import RampartConntrack
import RampartCore
import RampartNetlink

/// `apply`, `diff`, `show` and `flush`: the same code for every backend (`any FirewallBackend`).

struct Apply: ParsableCommand {
    /// The commit succeeded but the conntrack cut did not (exit 3).
    struct NotCut: Error, CustomStringConvertible {
        var error: any Error
        var description: String { "the policy is committed, but connections it no longer allows may still pass: \(error)" }
    }

    static let configuration = CommandConfiguration(
        abstract: "Validate a document and bring the kernel to it in one transaction.",
        discussion: "Re-applying the same document commits nothing. Anything changed by hand in Rampart's table (or chains and ipsets) is repaired.")

    @Flag(help: "Print the change in the backend's syntax (nft, or iptables-restore and ipset lines) and change nothing.")
    var dryRun = false

    @OptionGroup var target: TargetOptions

    @Argument(help: "The desired-state document (JSON), or - for standard input.")
    var file: String

    func run() throws {
        try reportingFailures {
            let start = DispatchTime.now().uptimeNanoseconds
            let document = try loadDocument(file)
            let desired = Compiler.compile(document)
            let backend = try target.connect()
            for w in backend.warnings() { FileHandle.standardError.write(Data("rampart: warning: \(w)\n".utf8)) }
            if dryRun {
                let change = try backend.pending(to: desired)
                print(change.isEmpty ? "# no changes" : change.text, terminator: change.isEmpty ? "\n" : "")
                return
            }
            let change = try backend.converge(to: desired)
            if change.isEmpty {
                print("no changes (\(milliseconds(since: start)))")
                return
            }
            let applied = "applied: \(change.summary); \(backend.name)" + (change.generation.map { ", generation \($0)" } ?? "")
            // Revocation is immediate (contract rule 8): cut the connections the new policy no
            // longer allows, before returning.
            let cut: Int
            do {
                cut = try Self.cutConnections(after: change, desired: desired, namespace: target.namespace)
            } catch {
                print("\(applied); conntrack: not cut (\(milliseconds(since: start)))")
                throw Failure.system(NotCut(error: error))
            }
            print("\(applied); conntrack: \(cut) cut (\(milliseconds(since: start)))")
        }
    }

    /// Deletes the conntrack entries `desired` no longer allows, looking only where `change`
    /// can have narrowed access (everything local when the backend worked without a Plan).
    static func cutConnections(after change: BackendChange, desired: RulesetIR, namespace: NetworkNamespace) throws -> Int {
        let local = IRLocalInstances(desired)  // indexed once, for the scope and the cut
        let (scope, departed) = Revocation.work(after: change, result: desired, previous: change.previous, local: local)
        guard scope != .none else { return 0 }
        return try ConntrackCutter(namespace: namespace).cut(ir: desired, scope: scope, departed: departed, local: local).cut
    }
}

struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what `apply` would change (drift included), in the backend's syntax.")

    @OptionGroup var target: TargetOptions

    @Argument(help: "The desired-state document (JSON), or - for standard input.")
    var file: String

    func run() throws {
        try reportingFailures {
            let document = try loadDocument(file)
            let change = try target.connect().pending(to: Compiler.compile(document))
            if change.isEmpty {
                print("# in sync: nothing to change")
            } else {
                print("# \(change.summary)")
                print(change.text, terminator: "")
            }
        }
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what is enforced: instances, their groups and rules, with counters.")

    @Flag(help: "Print JSON instead of text.")
    var json = false

    @OptionGroup var target: TargetOptions

    func run() throws {
        try reportingFailures {
            guard let report = try target.connect().enforcement() else {
                print(json ? "null" : "nothing is enforced: Rampart has no rules here")
                return
            }
            print(json ? report.json : report.text, terminator: json ? "\n" : "")
        }
    }
}

struct Flush: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove Rampart's table (or its chains and ipsets) and nothing else.")

    @OptionGroup var target: TargetOptions

    func run() throws {
        try reportingFailures {
            let start = DispatchTime.now().uptimeNanoseconds
            let backend = try target.connect()
            let change = try backend.converge(to: nil)
            print(change.isEmpty ? "nothing to flush (\(milliseconds(since: start)))" : "flushed Rampart's rules from \(backend.name) (\(milliseconds(since: start)))")
        }
    }
}
