import Foundation
import Testing
import RampartHarness

/// The backends the traffic suite runs against: the same probes and expectations for each.
/// The backend-specific parts are only how a test looks at or damages the kernel state.
enum TrafficBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case nftables
    case iptablesLegacy = "iptables-legacy"
    case iptablesNFT = "iptables-nft"
    /// iptables-legacy on a bridged hypervisor: instances told apart by bridge port (physdev).
    case iptablesBridged = "iptables-legacy-bridged"
    /// iptables-nft on a bridged hypervisor.
    case iptablesNFTBridged = "iptables-nft-bridged"

    var testDescription: String { rawValue }

    /// Options of `rampart apply` selecting this backend.
    var options: [String] {
        switch self {
        case .nftables: []
        case .iptablesLegacy: ["--backend", "iptables", "--iptables", "legacy"]
        case .iptablesNFT: ["--backend", "iptables", "--iptables", "nft"]
        case .iptablesBridged: ["--backend", "iptables", "--iptables", "legacy", "--topology", "bridged"]
        case .iptablesNFTBridged: ["--backend", "iptables", "--iptables", "nft", "--topology", "bridged"]
        }
    }

    var variant: String? {
        switch self {
        case .nftables: nil
        case .iptablesLegacy, .iptablesBridged: "legacy"
        case .iptablesNFT, .iptablesNFTBridged: "nft"
        }
    }

    /// The topology this backend is tested on.
    var bridged: Bool { self == .iptablesBridged || self == .iptablesNFTBridged }

    func tool(_ v6: Bool, _ verb: String? = nil) -> String {
        (v6 ? "ip6tables-" : "iptables-") + variant! + (verb.map { "-" + $0 } ?? "")
    }

    /// Everything the backend wrote, as text (no timestamps).
    func snapshot(_ ns: TestNamespace) throws -> String {
        guard variant != nil else { return try ns.nft("list", "ruleset").stdout }
        var out = ""
        for v6 in [false, true] {
            out += try ns.run([tool(v6, "save"), "-t", "filter"], check: true).stdout
                .split(separator: "\n").filter { !$0.hasPrefix("#") }
                // Built-in chains' policy counters move with any traffic: not part of the state.
                .map { $0.replacingOccurrences(of: #"\[\d+:\d+\]"#, with: "[]", options: .regularExpression) }
                .joined(separator: "\n")
        }
        return out + (try ns.run(["ipset", "save"], check: true).stdout)
    }

    /// Someone empties the web group's ingress chain.
    func flushWebIngress(_ ns: TestNamespace) throws {
        if variant == nil {
            try ns.nft("flush", "chain", "inet", "rampart", "gin-web")
        } else {
            for v6 in [false, true] { try ns.run([tool(v6), "-w", "-F", "rp-gi-web"], check: true) }
        }
    }

    /// Someone removes Rampart's whole hold on the traffic (the table; the jumps from the
    /// built-in chains).
    func removeEverything(_ ns: TestNamespace) throws {
        if variant == nil {
            try ns.nft("delete", "table", "inet", "rampart")
        } else {
            for v6 in [false, true] {
                for (b, c) in [("FORWARD", "RAMPART-FWD"), ("INPUT", "RAMPART-IN"), ("OUTPUT", "RAMPART-OUT")] {
                    try ns.run([tool(v6), "-w", "-D", b, "-j", c], check: true)
                }
            }
        }
    }

    /// Another owner's drop of HTTP from 192.0.2.10, ahead of Rampart (a table at a later
    /// priority for nftables; a chain jumped from the top of FORWARD for iptables).
    func addForeignDrop(_ ns: TestNamespace) throws {
        if variant == nil {
            try ns.nft("add", "table", "inet", "other")
            try ns.nft("add", "chain", "inet", "other", "filt", "{ type filter hook forward priority 10; policy accept; }")
            try ns.nft("add", "rule", "inet", "other", "filt", "tcp", "dport", "80", "ip", "saddr", "192.0.2.10", "drop")
        } else {
            try ns.run([tool(false), "-w", "-N", "OTHER"], check: true)
            try ns.run([tool(false), "-w", "-A", "OTHER", "-s", "192.0.2.10", "-p", "tcp", "--dport", "80", "-j", "DROP"], check: true)
            try ns.run([tool(false), "-w", "-I", "FORWARD", "1", "-j", "OTHER"], check: true)
        }
    }

    func foreignDropPresent(_ ns: TestNamespace) throws -> Bool {
        if variant == nil { return try ns.nft("list", "table", "inet", "other").stdout.contains("drop") }
        return try ns.run([tool(false, "save"), "-t", "filter"], check: true).stdout.contains("-A OTHER -s 192.0.2.10/32 -p tcp -m tcp --dport 80 -j DROP")
    }
}
