import ArgumentParser
import Foundation
import RampartConntrack
import RampartBackends
import RampartCore
import RampartIPTables
import RampartNFTables
import RampartNetlink
import RampartSystem

/// `rampart`: apply a desired-state document to this host's kernel (nftables, or iptables and
/// ipsets), show what is enforced, diff, flush; and the controller's verbs over the store. Exit status: 0 success (or nothing to do), 1 invalid document or usage, 2 the
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
        subcommands: [Apply.self, Diff.self, Show.self, Explain.self, Flush.self, GroupCommand.self, InstanceCommand.self, HostCommand.self, Import.self, Export.self, ChangeLogCommand.self]
    )
}

/// Where to act, and with which backend (the same options as `rampartd`'s).
struct TargetOptions: ParsableArguments {
    @OptionGroup var options: BackendOptions

    var netns: String? { options.netns }
    var backend: BackendChoice.Kind { options.backend }
    var choice: BackendChoice { options.choice }

    var namespace: NetworkNamespace { choice.namespace }

    /// The backend chosen by `--backend` and its options.
    func connect() throws -> any FirewallBackend {
        do { return try choice.makeBackend() } catch { throw Failure.system(error) }
    }

    /// The nftables backend, for what only it can answer (`explain` decodes its bytecode).
    func connectNFTables() throws -> NFTablesBackend {
        do {
            return NFTablesBackend(client: try NFTablesConnection(namespace: namespace))
        } catch {
            throw Failure.system(error)
        }
    }
}


/// Failures, each with its exit status and a message on standard error.
enum Failure: Error {
    case document(String)
    /// A backend's error, classified by the backend (`BackendFailure`).
    case backend(any Error)
    case system(any Error)

    var exitCode: Int32 {
        switch self {
        case .document: 1
        case .backend(let e):
            switch e.backendFailureKind {
            case .conflict, .refused: 2
            case .unsupported: 1
            case .unknown: 3
            }
        case .system: 3
        }
    }

    var message: String {
        switch self {
        case .document(let m): m
        case .backend(let e): "rampart: \(e)"
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
    } catch let e as any BackendFailure {
        let f = Failure.backend(e)
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

