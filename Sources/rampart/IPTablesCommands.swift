import ArgumentParser
import Foundation
import RampartCore
import RampartIPTables

/// Which backend programs the kernel.
enum BackendKind: String, ExpressibleByArgument, CaseIterable {
    case nftables, iptables
}

extension IPTTopology: ExpressibleByArgument {}
extension IPTablesVariant: ExpressibleByArgument {}

/// The iptables backend's side of `apply`, `diff`, `show` and `flush` (`--backend iptables`).
enum IPTablesCommands {
    static func backend(_ t: TargetOptions) -> IPTablesBackend {
        IPTablesBackend(variant: t.iptablesVariant ?? .detect(), topology: t.topology, netns: t.netns)
    }

    /// iptables failures: a refused restore or ipset command exits 2 (previous rules in place),
    /// an IR the backend cannot express exits 1.
    static func reporting(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let e as IPTError {
            FileHandle.standardError.write(Data("rampart: \(e)\n".utf8))
            throw ExitCode(2)
        } catch let e as IPTUnsupported {
            FileHandle.standardError.write(Data("rampart: \(e)\n".utf8))
            throw ExitCode(1)
        }
    }

    static func apply(_ t: TargetOptions, document: Document, dryRun: Bool, start: UInt64) throws {
        try reporting {
            let b = backend(t)
            let desired = Compiler.compile(document)
            if dryRun {
                let c = try b.pending(to: desired)
                print(c.isEmpty ? "# no changes" : c.text, terminator: c.isEmpty ? "\n" : "")
                return
            }
            let c = try b.converge(to: desired)
            if c.isEmpty {
                print("no changes (\(milliseconds(since: start)))")
            } else {
                print("applied: \(c.summary); iptables-\(b.variant.rawValue), \(b.topology.rawValue) (\(milliseconds(since: start)))")
            }
        }
    }

    static func diff(_ t: TargetOptions, document: Document) throws {
        try reporting {
            let c = try backend(t).pending(to: Compiler.compile(document))
            if c.isEmpty {
                print("# in sync: nothing to change")
            } else {
                print("# \(c.summary)")
                print(c.text, terminator: "")
            }
        }
    }

    static func flush(_ t: TargetOptions, start: UInt64) throws {
        try reporting {
            let c = try backend(t).converge(to: nil)
            print(c.isEmpty ? "nothing to flush (\(milliseconds(since: start)))" : "flushed Rampart's chains and ipsets (\(milliseconds(since: start)))")
        }
    }

    static func show(_ t: TargetOptions, json: Bool) throws {
        try reporting {
            let st = try backend(t).readBack()
            if json {
                var obj: [String: Any] = [:]
                obj["ipv4"] = st.v4.chains
                obj["ipv6"] = st.v6.chains
                obj["ipsets"] = st.sets.mapValues { $0.members.sorted() }
                let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            if st.v4.chains.isEmpty && st.v6.chains.isEmpty && st.sets.isEmpty {
                print("no rampart chains: nothing is enforced")
                return
            }
            for (label, ch) in [("iptables", st.v4), ("ip6tables", st.v6)] {
                print("# \(label) -t filter")
                for (name, rules) in ch.chains.sorted(by: { $0.key < $1.key }) {
                    print(":\(name)")
                    for r in rules { print("-A \(name) \(r)") }
                }
            }
            for (name, s) in st.sets.sorted(by: { $0.key < $1.key }) {
                print("ipset \(name) (\(s.family == .ipv4 ? "inet" : "inet6")): \(s.members.sorted().joined(separator: " "))")
            }
        }
    }
}
