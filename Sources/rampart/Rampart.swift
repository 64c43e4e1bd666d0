import ArgumentParser
import Foundation
import RampartConntrack
import RampartCore
import RampartIPTables
import RampartNFTables
import RampartNetlink
import RampartSystem

/// `rampart`: apply a desired-state document to this host's nftables, show what is enforced,
/// diff, flush. Exit status: 0 success (or nothing to do), 1 invalid document or usage, 2 the
/// kernel refused (nothing changed), 3 outcome unknown or other system failure.
@main
struct Rampart: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rampart",
        abstract: "Security groups enforced with nftables, changed by the smallest atomic transaction.",
        discussion: """
            Rampart owns one table, `inet rampart`, and never touches anything outside it.
            Exit status: 0 success, 1 invalid document, 2 the kernel refused (nothing changed),
            3 outcome unknown or another system failure.
            """,
        subcommands: [Apply.self, Diff.self, Show.self, Explain.self, Flush.self, GroupCommand.self, InstanceCommand.self, HostCommand.self, Import.self, Export.self]
    )
}

/// Where to act.
struct TargetOptions: ParsableArguments {
    @Option(name: .long, help: "Act in this network namespace (as made by `ip netns add`) instead of the current one.")
    var netns: String?

    @Option(help: "Which backend programs the kernel: nftables (default) or iptables.")
    var backend: BackendKind = .nftables

    @Option(help: "iptables backend: how instances are told apart, routed (default) or bridged (physdev).")
    var topology: IPTTopology = .routed

    @Option(name: .customLong("iptables"), help: "iptables backend: legacy or nft (default: what `iptables` runs).")
    var iptablesVariant: IPTablesVariant?

    func connect() throws -> NFTablesBackend {
        let ns: NetworkNamespace = netns.map { .named($0) } ?? .current
        do {
            return NFTablesBackend(client: try NFTablesConnection(namespace: ns))
        } catch {
            throw Failure.system(error)
        }
    }
}

/// Failures, each with its exit status and a message on standard error.
enum Failure: Error {
    case document(String)
    case kernel(NetlinkError)
    case system(any Error)

    var exitCode: Int32 {
        switch self {
        case .document: 1
        case .kernel(let e):
            if case .rejected = e { 2 } else if case .generationChanged = e { 2 } else { 3 }
        case .system: 3
        }
    }

    var message: String {
        switch self {
        case .document(let m): m
        case .kernel(let e): "rampart: \(e)"
        case .system(let e): "rampart: \(e)"
        }
    }
}

/// Runs `body`, turning failures into a message and an exit status.
func reportingFailures(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let f as Failure {
        FileHandle.standardError.write(Data((f.message + "\n").utf8))
        throw ExitCode(f.exitCode)
    } catch let e as NetlinkError {
        let f = Failure.kernel(e)
        FileHandle.standardError.write(Data((f.message + "\n").utf8))
        throw ExitCode(f.exitCode)
    }
}

/// Reads and validates a document from a path, or standard input for `-`.
func loadDocument(_ path: String) throws -> Document {
    let data: Data
    if path == "-" {
        data = FileHandle.standardInput.readDataToEndOfFile()
    } else {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw Failure.document("rampart: cannot read \(path)")
        }
        data = d
    }
    do {
        return try Document.parse(json: data)
    } catch {
        throw Failure.document("rampart: \(path == "-" ? "standard input" : path): \(error)")
    }
}

func milliseconds(since start: UInt64) -> String {
    String(format: "%.2f ms", Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
}

struct Apply: ParsableCommand {
    /// The commit succeeded but the conntrack cut did not (exit 3).
    struct NotCut: Error, CustomStringConvertible {
        var error: any Error
        var description: String { "the policy is committed, but connections it no longer allows may still pass: \(error)" }
    }

    static let configuration = CommandConfiguration(
        abstract: "Validate a document and bring the kernel to it in one transaction.",
        discussion: "Re-applying the same document commits nothing. Anything changed by hand inside `inet rampart` is repaired.")

    @Flag(help: "Print the plan in nft syntax and change nothing.")
    var dryRun = false

    @OptionGroup var target: TargetOptions

    @Argument(help: "The desired-state document (JSON), or - for standard input.")
    var file: String

    func run() throws {
        try reportingFailures {
            let start = DispatchTime.now().uptimeNanoseconds
            let document = try loadDocument(file)
            if target.backend == .iptables {
                return try IPTablesCommands.apply(target, document: document, dryRun: dryRun, start: start)
            }
            let desired = Compiler.compile(document)
            let backend = try target.connect()
            if dryRun {
                let plan = diff(from: try backend.readBack(reference: desired), to: desired)
                print(plan.isEmpty ? "# no changes" : Render.plan(plan, table: backend.table), terminator: plan.isEmpty ? "\n" : "")
                return
            }
            // What the kernel holds before (read back once; converge then trusts it while the
            // generation holds still): tells a chain that only gained rules from one that lost some.
            let before = try backend.committed(reference: desired)
            let (plan, commit) = try backend.converge(to: desired)
            if plan.isEmpty {
                print("no changes (\(milliseconds(since: start)))")
                return
            }
            // Revocation is immediate (contract rule 8): cut the connections the new policy no
            // longer allows, before returning.
            let applied = "applied: \(plan.summary); generation \(commit?.generation ?? 0)"
            var cut = 0
            let scope = Revocation.scope(of: plan, result: desired, previous: before)
            if scope != .none {
                let ns: NetworkNamespace = target.netns.map { .named($0) } ?? .current
                do {
                    let conntrack = try ConntrackConnection(namespace: ns)
                    cut = try Revocation.run(conntrack, ir: desired, scope: scope,
                                             departed: Revocation.departed(in: plan, result: desired),
                                             hostAddresses: try Revocation.hostAddresses(in: ns)).cut
                } catch {
                    print("\(applied); conntrack: not cut (\(milliseconds(since: start)))")
                    throw Failure.system(NotCut(error: error))
                }
            }
            print("\(applied); conntrack: \(cut) cut (\(milliseconds(since: start)))")
        }
    }
}

struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what `apply` would change (drift included), in nft syntax.")

    @OptionGroup var target: TargetOptions

    @Argument(help: "The desired-state document (JSON), or - for standard input.")
    var file: String

    func run() throws {
        try reportingFailures {
            let document = try loadDocument(file)
            if target.backend == .iptables { return try IPTablesCommands.diff(target, document: document) }
            let desired = Compiler.compile(document)
            let backend = try target.connect()
            let plan = diff(from: try backend.readBack(reference: desired), to: desired)
            if plan.isEmpty {
                print("# in sync: nothing to change")
            } else {
                print("# \(plan.summary)")
                print(Render.plan(plan, table: backend.table), terminator: "")
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
            if target.backend == .iptables { return try IPTablesCommands.show(target, json: json) }
            let backend = try target.connect()
            guard let snap = try backend.client.readTable(family: .inet, name: backend.table) else {
                if json { print("null") } else { print("no rampart table: nothing is enforced") }
                return
            }
            let view = EnforcementView(snap)
            if json {
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try enc.encode(view), as: UTF8.self))
            } else {
                print(view.text, terminator: "")
            }
        }
    }
}

struct Flush: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove the `inet rampart` table and nothing else.")

    @OptionGroup var target: TargetOptions

    func run() throws {
        try reportingFailures {
            let start = DispatchTime.now().uptimeNanoseconds
            if target.backend == .iptables { return try IPTablesCommands.flush(target, start: start) }
            let backend = try target.connect()
            let (plan, _) = try backend.converge(to: nil)
            print(plan.isEmpty ? "nothing to flush (\(milliseconds(since: start)))" : "flushed inet \(backend.table) (\(milliseconds(since: start)))")
        }
    }
}
