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
            if b.topology == .bridged, b.bridgeNetfilterEnabled() != true {
                FileHandle.standardError.write(Data("rampart: warning: br_netfilter is not handing bridged traffic to iptables here (net.bridge.bridge-nf-call-iptables / -ip6tables): bridged instances are not filtered\n".utf8))
            }
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

    /// Instance → groups → rules with counters, read from Rampart's chains: the dispatch chain
    /// `rp-from` names each instance's interface and egress chain, the instance chains name
    /// their groups, the group chains hold the rules (one per family).
    struct View: Codable {
        struct InstanceView: Codable {
            var instance: String
            var interface: String
            var ingress_groups: [String]
            var egress_groups: [String]
        }
        var instances: [InstanceView]
        var rules: [IPTablesBackend.CountedRule]
        var ipsets: [String: [String]]
    }

    static func show(_ t: TargetOptions, json: Bool) throws {
        try reporting {
            let b = backend(t)
            let st = try b.readBack()
            if st.v4.chains.isEmpty && st.v6.chains.isEmpty && st.sets.isEmpty {
                print(json ? "null" : "no rampart chains: nothing is enforced")
                return
            }
            let counted = try b.countedRules()
            func groups(_ chain: String, _ prefix: String) -> [String] {
                var out: [String] = []
                for r in (st.v4.chains[chain] ?? []) + (st.v6.chains[chain] ?? []) where r.hasPrefix("-j " + prefix) {
                    let g = String(r.dropFirst(3 + prefix.count))
                    if !out.contains(g) { out.append(g) }
                }
                return out
            }
            var instances: [View.InstanceView] = []
            for line in st.v4.chains[IPTNames.fromInstances] ?? st.v6.chains[IPTNames.fromInstances] ?? [] {
                let w = line.split(separator: " ").map(String.init)
                guard let j = w.firstIndex(of: "-j"), j + 1 < w.count, w[j + 1].hasPrefix("rp-o-") else { continue }
                let iface = w[1] == "physdev" ? w[3] : w[1]
                let id = String(w[j + 1].dropFirst(5))
                instances.append(.init(instance: id, interface: iface, ingress_groups: groups("rp-i-" + id, "rp-gi-"),
                                       egress_groups: groups("rp-o-" + id, "rp-go-")))
            }
            instances.sort { $0.instance < $1.instance }
            let groupRules = counted.filter { $0.chain.hasPrefix("rp-gi-") || $0.chain.hasPrefix("rp-go-") }
            let view = View(instances: instances, rules: groupRules, ipsets: st.sets.mapValues { $0.members.sorted() })
            if json {
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try enc.encode(view), as: UTF8.self))
                return
            }
            for i in instances {
                print("instance \(i.instance) (\(i.interface))")
                for (dir, gs, p) in [("ingress", i.ingress_groups, "rp-gi-"), ("egress", i.egress_groups, "rp-go-")] {
                    for g in gs {
                        print("  \(dir) \(g)")
                        for r in groupRules where r.chain == p + g {
                            print("    \(r.family) \(r.rule)   packets \(r.packets) bytes \(r.bytes)")
                        }
                    }
                }
            }
            for (name, s) in st.sets.sorted(by: { $0.key < $1.key }) {
                print("ipset \(name) (\(s.family == .ipv4 ? "inet" : "inet6")): \(s.members.sorted().joined(separator: " "))")
            }
        }
    }
}
