import RampartCore

/// Names of Rampart's iptables chains and ipsets, derived deterministically from the IR's names.
///
/// iptables chain names are at most 28 bytes (XT_EXTENSION_MAXNAMELEN − 1), ipset names at most
/// 31 (IPSET_MAXNAMELEN − 1). A name that fits and uses only `[A-Za-z0-9_.-]` is kept readable
/// (`rp-gi-web`); any other is cut and suffixed with 8 hex digits of the FNV-1a hash of the IR name
/// (`rp-gi-averyveryverylo-1a2b3c4d`), so it stays stable across runs and hosts and distinct.
public enum IPTNames {
    /// Jumped to once from the built-in FORWARD chain.
    public static let forward = "RAMPART-FWD"
    /// Jumped to once from INPUT (instance → host: the instance's egress).
    public static let input = "RAMPART-IN"
    /// Jumped to once from OUTPUT (host → instance: the instance's ingress).
    public static let output = "RAMPART-OUT"
    /// FORWARD, from an instance (`rp-is-in` matched): source checks, link protocols, guarded
    /// destinations, ct state, egress, ingress of a receiving instance, ACCEPT.
    public static let forwardFrom = "rp-fwd-from"
    /// FORWARD, to an instance from elsewhere: link protocols, ct state, ingress, ACCEPT.
    public static let forwardTo = "rp-fwd-to"
    /// Instance → host: source checks, NDP and DHCP to the host, ct state, egress, back to INPUT.
    public static let inputInstances = "rp-input"
    /// Host → instance: NDP and DHCP from the host, ct state, ingress dispatch, back to OUTPUT.
    public static let outputInstances = "rp-output"
    /// Egress dispatch (the `from-inst` map): `-i tapX -j rp-o-X`.
    public static let fromInstances = "rp-from"
    /// Ingress dispatch (the `to-inst` map): `-o tapX -j rp-i-X`.
    public static let toInstances = "rp-to"
    /// Bridged topology, host → instance: by destination address, `-d A -j rp-i-X`.
    public static let toHostInstances = "rp-to-host"
    /// Bridged topology, OUTPUT: `-d A -g rp-output` per instance address (the port is unknown).
    public static let outputDispatch = "rp-out-dst"
    /// "From an instance's interface", "to an instance's interface" (bridged: port), and bridged
    /// "from one of its addresses": per-interface rules that set the mark bit (`-g rp-accept`),
    /// tested right after.
    public static let isInstanceIn = "rp-is-in"
    public static let isInstanceOut = "rp-is-out"
    public static let spoof = "rp-spoof"
    /// FORWARD from an instance to a device of a guarded prefix: dropped unless an instance's.
    public static let guardTo = "rp-guard-to"
    /// Bridged FORWARD, a DHCP request from an instance: dropped if to an instance here.
    public static let dhcpTo = "rp-dhcp-to"
    /// MAC anti-spoofing: `-i tapX -m mac ! --mac-source M -j DROP` per instance with a MAC.
    public static let macCheck = "rp-mac"
    /// Neighbour advertisements from an instance: header shape, link-local target, then `rp-na`.
    public static let naCheck = "rp-na-chk"
    /// NA targets each instance may advertise: `-i tapX -m u32 --u32 <target = A> -g rp-accept`.
    public static let naTargets = "rp-na"
    /// An IR `accept` in a regular chain: `-g rp-accept` sets the mark bit and returns.
    public static let accept = "rp-accept"
    /// A related packet from an instance (an ICMP error) about a connection it is an end of:
    /// one rule per interface (port) and address and direction (`--ctorigsrc`, `--ctreplsrc`)
    /// that sets the mark bit; `rp-rel-ok` then clears it and accepts (forward), `rp-clear`
    /// clears it and returns (input).
    public static let relatedOwn = "rp-related"
    /// Bridged: a packet the hypervisor routes onto the bridge to an instance (its bridge port is
    /// chosen after FORWARD, so `--physdev-out` cannot name it): dispatched by destination
    /// address (`-d A -g rp-fwd-to-rt`) to the receiver's path, which picks its ingress by
    /// address (`rp-to-host`), as OUTPUT does.
    public static let forwardRoutedDispatch = "rp-fwd-dst"
    public static let forwardToRouted = "rp-fwd-to-rt"
    public static let relatedAccept = "rp-rel-ok"
    public static let clearReturn = "rp-clear"
    /// The built-in chains and the Rampart chain each jumps to.
    public static let entries: [(builtin: String, chain: String)] = [("FORWARD", forward), ("INPUT", input), ("OUTPUT", output)]

    /// The raw table (before conntrack), jumped to once from its PREROUTING: every packet from
    /// an instance's interface (or a guarded one) goes on to `rp-pre-chk`; nothing else is
    /// touched. A dispatch chain (all its rules go to the same place).
    public static let prerouting = "RAMPART-PRE"
    /// The source check before conntrack: the instance's own address on its interface, or one
    /// of the link's own sources (rule 5), returns; anything else is dropped before conntrack
    /// can take it for another's connection.
    public static let preCheck = "rp-pre-chk"
    /// Bridged (no `hash:net,iface` lookup can name a bridge port): `-s A -m physdev
    /// --physdev-in X -g rp-pre-mark` per instance address, a dispatch chain patched rule by
    /// rule as `rp-spoof` is; `rp-pre-mark` sets the mark bit, `rp-pre-ok` clears it again and
    /// leaves the raw table's Rampart chains.
    public static let preSources = "rp-pre-src"
    public static let preMark = "rp-pre-mark"
    public static let preOK = "rp-pre-ok"
    public static let rawEntries: [(builtin: String, chain: String, match: String)] = [("PREROUTING", prerouting, "")]
    /// The raw table's chains.
    public static let rawChains: Set<String> = [prerouting, preCheck, preSources, preMark, preOK]

    /// Anti-spoofing: `A,tapX` pairs (`hash:net,iface`), looked up with `src,src`.
    public static let sources4 = "rp-src4"
    public static let sources6 = "rp-src6"
    public static func sources(_ f: IPFamily) -> String { f == .ipv4 ? sources4 : sources6 }
    /// The fixed sets (never a group's: those start with `rp4-`/`rp6-`).
    public static let fixedSets: Set<String> = [sources4, sources6]

    /// Bridged topology, ebtables (nat table): every frame entering the bridge (PREROUTING:
    /// source MACs, the ethertypes an instance may send, its ARP in `RAMPART-ARP`), and host →
    /// guarded ports (OUTPUT), where iptables cannot see the bridge port.
    public static let link = "RAMPART-L2"
    public static let arp = "RAMPART-ARP"
    public static let bridgeOutput = "RAMPART-EBOUT"
    public static let ebEntries: [(builtin: String, chain: String, match: String)] = [("PREROUTING", link, ""), ("OUTPUT", bridgeOutput, "")]
    /// Jumps of an earlier layout, deleted where found: until 2026-12-04 PREROUTING sent only
    /// ARP to Rampart (`-p ARP -j RAMPART-ARP`). Kept in `IPTState.jumpsEB` as the whole line.
    public static let legacyEBJumps: [String] = ["PREROUTING -p ARP -j \(arp)"]

    /// Dispatch chains: each rule matches one interface (or address) no other rule of the chain
    /// matches, or all its rules have the same effect, so their order does not matter. They are
    /// compared as multisets and changed rule by rule (`-D` / `-A`), not rewritten: plugging an
    /// instance adds its few dispatch rules.
    public static let unordered: Set<String> = [fromInstances, toInstances, toHostInstances, outputDispatch, macCheck, naTargets,
                                                isInstanceIn, isInstanceOut, spoof, relatedOwn, forwardRoutedDispatch, prerouting, preSources]

    /// Every chain the fixed layout renders (`InstanceChecks`), ebtables' included; with the
    /// chains of the earlier layout (`rp-fwd`), so an upgrade deletes them.
    public static let fixedChains: Set<String> = [
        forward, input, output, forwardFrom, forwardTo, inputInstances, outputInstances, fromInstances,
        toInstances, toHostInstances, outputDispatch, macCheck, naCheck, naTargets, accept, link, arp, bridgeOutput, "rp-fwd", "rp-fwd-ing",
        isInstanceIn, isInstanceOut, spoof, guardTo, dhcpTo, relatedOwn, relatedAccept, clearReturn,
        forwardRoutedDispatch, forwardToRouted, prerouting, preCheck, preSources, preMark, preOK,
    ]

    /// The packet-mark bit Rampart uses (and clears again) to carry "accepted" out of a group
    /// chain through the instance chain that jumped to it.
    public static let markBit: UInt32 = 0x2000_0000
    public static var markText: String { "0x" + String(markBit, radix: 16) }

    /// Every chain and ipset Rampart owns starts with one of these.
    public static func isOwnedChain(_ name: String) -> Bool { name.hasPrefix("rp-") || name.hasPrefix("RAMPART-") }
    public static func isOwnedSet(_ name: String) -> Bool { name.hasPrefix("rp4-") || name.hasPrefix("rp6-") || fixedSets.contains(name) }

    static let chainMax = 26  // 28 minus room for the 2-byte helper suffix (`-s`)
    static let setMax = 31

    /// The iptables chain of an IR (regular) chain.
    public static func chain(_ ir: String) -> String {
        let prefixes = [("gout-", "rp-go-"), ("gin-", "rp-gi-"), ("out-", "rp-o-"), ("in-", "rp-i-")]
        for (p, q) in prefixes where ir.hasPrefix(p) {
            return fit(q, String(ir.dropFirst(p.count)), full: ir, max: chainMax)
        }
        return fit("rp-x-", ir, full: ir, max: chainMax)
    }

    /// The anti-spoofing helper chain of a chain (several "saddr != A" terms in one rule).
    public static func spoofHelper(_ chain: String) -> String { chain + "-s" }

    /// The ipset of an IR member set (`m4-web` → `rp4-web`, `m6-web` → `rp6-web`).
    public static func set(_ ir: String) -> String {
        if ir.hasPrefix("m4-") { return fit("rp4-", String(ir.dropFirst(3)), full: ir, max: setMax) }
        if ir.hasPrefix("m6-") { return fit("rp6-", String(ir.dropFirst(3)), full: ir, max: setMax) }
        return fit("rp4-x-", ir, full: ir, max: setMax)
    }

    static func fit(_ prefix: String, _ id: String, full: String, max: Int) -> String {
        let plain = id.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
                || c == UInt8(ascii: "_") || c == UInt8(ascii: ".") || c == UInt8(ascii: "-")
        }
        if plain && prefix.utf8.count + id.utf8.count <= max { return prefix + id }
        let h = String(UInt32(truncatingIfNeeded: FNV1a.hash(full)), radix: 16)
        let hash = String(repeating: "0", count: 8 - h.count) + h
        let room = max - prefix.utf8.count - 9
        var kept = ""
        for u in id.unicodeScalars {
            guard u.isASCII, kept.utf8.count < room else { break }
            let c = Character(u)
            kept.append(c.isLetter || c.isNumber || c == "_" || c == "." || c == "-" ? c : "_")
        }
        return prefix + kept + "-" + hash
    }
}
