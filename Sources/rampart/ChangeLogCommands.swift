import ArgumentParser
import Foundation
import RampartCore
import RampartStore

/// `rampart changelog`: the PostgreSQL store's per-host change log, as the controller sees it.
struct ChangeLogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "changelog", abstract: "The per-host change log of a PostgreSQL store: how far each daemon is, and trimming.",
        subcommands: [Status.self, Trim.self])

    /// Opens the store and insists that it keeps a change log (exit 1 otherwise).
    static func log(_ controller: ControllerOptions) throws -> any ChangeLog {
        // Checked before opening: opening a SQLite path for writing would create the file.
        guard case .postgres = try controller.address else {
            FileHandle.standardError.write(Data("rampart: \(try controller.address) is a SQLite store: it keeps no change log (daemons are told over their sockets)\n".utf8))
            throw ExitCode(1)
        }
        guard let log = try controller.open() as? any ChangeLog else { throw ExitCode(1) }
        return log
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each host's last sequence number, what its daemon applied, and when.")
        @Option(name: .customLong("host"), help: "Only these hosts (repeatable).") var hosts: [String] = []
        @Flag(help: "One JSON object per line.") var json = false
        @OptionGroup var controller: ControllerOptions

        func run() throws {
            let log = try ChangeLogCommand.log(controller)
            let rows: [LogProgress]
            do { rows = try log.progress(hosts: hosts.isEmpty ? nil : hosts) } catch {
                FileHandle.standardError.write(Data("rampart: \(error.message)\n".utf8))
                throw ExitCode(3)
            }
            if !json { print("HOST\tHEAD\tAPPLIED\tPENDING\tAPPLIED AT") }
            for p in rows {
                if json {
                    let at = p.appliedAt.map { "\"\($0)\"" } ?? "null"
                    // Keys in sorted order, like every JSON Rampart writes.
                    print(#"{"applied":\#(p.applied),"applied_at":\#(at),"head":\#(p.head),"host":\#(jsonString(p.host)),"pending":\#(p.pending)}"#)
                } else {
                    print("\(p.host)\t\(p.head)\t\(p.applied)\t\(p.pending)\t\(p.appliedAt ?? "never")")
                }
            }
        }
    }

    struct Trim: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete change-log rows older than --max-age or beyond the newest --keep of each host. A daemon behind a trimmed row reloads its whole document.")
        @Option(help: "Seconds: rows older than this go.") var maxAge: Int?
        @Option(help: "Rows kept per host (the newest).") var keep: Int?
        @OptionGroup var controller: ControllerOptions

        func validate() throws {
            guard maxAge != nil || keep != nil else { throw ValidationError("give --max-age, --keep, or both") }
            if let m = maxAge, m < 0 { throw ValidationError("--max-age must be 0 or more") }
            if let k = keep, k < 0 { throw ValidationError("--keep must be 0 or more") }
        }

        func run() throws {
            let log = try ChangeLogCommand.log(controller)
            do { print("trimmed \(try log.trim(maxAge: maxAge, keep: keep)) rows") } catch {
                FileHandle.standardError.write(Data("rampart: \(error.message)\n".utf8))
                throw ExitCode(3)
            }
        }
    }
}
