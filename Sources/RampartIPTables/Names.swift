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
    /// Instance traffic through the host: ct state, egress dispatch, ingress dispatch, final ACCEPT.
    public static let forwardInstances = "rp-fwd"
    /// Instance → host: ct state, egress dispatch, then back to INPUT.
    public static let inputInstances = "rp-input"
    /// Host → instance: ct state, ingress dispatch, then back to OUTPUT.
    public static let outputInstances = "rp-output"
    /// Egress dispatch (the `from-inst` map): `-i tapX -j rp-o-X`.
    public static let fromInstances = "rp-from"
    /// Ingress dispatch (the `to-inst` map): `-o tapX -j rp-i-X`.
    public static let toInstances = "rp-to"
    /// Bridged topology, host → instance: by destination address, `-d A -j rp-i-X`.
    public static let toHostInstances = "rp-to-host"
    /// An IR `accept` in a regular chain: `-g rp-accept` sets the mark bit and returns.
    public static let accept = "rp-accept"
    /// The built-in chains and the Rampart chain each jumps to.
    public static let entries: [(builtin: String, chain: String)] = [("FORWARD", forward), ("INPUT", input), ("OUTPUT", output)]

    /// Dispatch chains: each rule matches one interface (or address) no other rule of the chain
    /// matches, so their order does not matter. They are compared as multisets and changed rule by
    /// rule (`-D` / `-A`), not rewritten: plugging an instance adds its few dispatch rules.
    public static let unordered: Set<String> = [forward, input, output, fromInstances, toInstances, toHostInstances]

    /// The packet-mark bit Rampart uses (and clears again) to carry "accepted" out of a group
    /// chain through the instance chain that jumped to it.
    public static let markBit: UInt32 = 0x2000_0000
    public static var markText: String { "0x" + String(markBit, radix: 16) }

    /// Every chain and ipset Rampart owns starts with one of these.
    public static func isOwnedChain(_ name: String) -> Bool { name.hasPrefix("rp-") || name.hasPrefix("RAMPART-") }
    public static func isOwnedSet(_ name: String) -> Bool { name.hasPrefix("rp4-") || name.hasPrefix("rp6-") }

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
