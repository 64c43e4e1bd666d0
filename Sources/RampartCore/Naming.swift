/// Every kernel object name Rampart uses. Names are derived from ids only, never from other user
/// text, so they are stable across runs and hosts. Ids are at most 64 bytes of
/// `[A-Za-z0-9._:-]`, so the longest name (`gout-` + id) is 69 bytes, far below the kernel's
/// 256-byte limit (NFT_NAME_MAXLEN), and a name can never contain a quote, space or control byte.
///
/// One substitution: `:` in an id becomes `/` in kernel names. nft's grammar (checked with nft
/// 1.0.6) accepts neither `:` in a bare name nor a quoted name for sets and chains, so a name
/// with `:` could be created over netlink but never listed back into a usable `nft -f` file.
/// `/` is in nft's identifier alphabet and never occurs in an id, so the mapping stays one-to-one.
public enum Naming {
    /// The one table Rampart owns (family inet).
    public static let table = "rampart"
    /// Interfaces of all instances on this host.
    public static let instanceInterfaces = "inst-ifaces"
    /// (interface . address) pairs each instance may send from, per family, and
    /// (interface . MAC) pairs of the instances that have a MAC, with their interfaces:
    /// anti-spoofing for all instances in one rule each.
    public static let sources4 = "inst-src4"
    public static let sources6 = "inst-src6"
    public static let sourceMACs = "inst-macs"
    public static let macInterfaces = "mac-ifaces"
    /// (interface . address) pairs a neighbour advertisement from an instance may name as its
    /// target (its IPv6 addresses; link-local targets are allowed by the rule itself). The same
    /// pairs as `sources6`, in a set of its own because nft's text types the lookup key as raw
    /// payload (see `SetKeyType.ifnameNDTarget`).
    public static let ndTargets = "inst-nd-targets"
    /// Dispatch map for traffic from instances: interface → jump out-<inst>.
    public static let fromInstanceMap = "from-inst"
    /// Dispatch map for traffic to instances: interface → jump in-<inst>.
    public static let toInstanceMap = "to-inst"
    /// Base chains.
    public static let egressChain = "egress"
    /// Base chain for traffic to instances (forward hook, priority 0).
    public static let ingressChain = "ingress"
    /// Base chain for instance → host traffic (input hook).
    public static let inputChain = "input"
    /// Base chain for host → instance traffic (output hook).
    public static let outputChain = "output"
    /// Base chain of the source checks before defragmentation and conntrack (prerouting hook).
    public static let preroutingChain = "prerouting"

    /// An id as it appears inside kernel names: `:` becomes `/` (see above).
    public static func kernelID(_ id: String) -> String {
        guard id.utf8.contains(UInt8(ascii: ":")) else { return id }
        return String(decoding: id.utf8.map { $0 == UInt8(ascii: ":") ? UInt8(ascii: "/") : $0 }, as: UTF8.self)
    }

    /// An id from its form inside kernel names (`kernelID` undone: `/` is never part of an id).
    public static func id(fromKernelID k: Substring) -> String {
        guard k.utf8.contains(UInt8(ascii: "/")) else { return String(k) }
        return String(decoding: k.utf8.map { $0 == UInt8(ascii: "/") ? UInt8(ascii: ":") : $0 }, as: UTF8.self)
    }

    /// Egress chain of one instance on this host.
    public static func instanceOut(_ id: String) -> String { "out-" + kernelID(id) }
    /// Ingress chain of one instance on this host.
    public static func instanceIn(_ id: String) -> String { "in-" + kernelID(id) }
    /// Ingress rules of a group (shared by its members on this host).
    public static func groupIn(_ id: String) -> String { "gin-" + kernelID(id) }
    /// Egress rules of a group.
    public static func groupOut(_ id: String) -> String { "gout-" + kernelID(id) }
    /// Member addresses of a group, per family.
    public static func memberSet(_ family: IPFamily, _ group: String) -> String {
        (family == .ipv4 ? "m4-" : "m6-") + kernelID(group)
    }

    /// The kernel's limit on rule comments (NFTNL_UDATA_COMMENT_MAXLEN).
    public static let commentMaxBytes = 128

    /// The comment of a compiled group rule: `<group>/<rule id>` or `<group>/#<index>`.
    /// Rule ids are free text, so the comment is made safe here once: control characters and
    /// double quotes become `?`/`'` (nft strings have no escapes) and the id part is cut on a
    /// character boundary so the whole stays within 128 bytes.
    public static func ruleComment(group: String, ruleID: String?, index: Int) -> String {
        let head = group + "/"
        guard let rid = ruleID else { return head + "#\(index)" }
        var out = head
        var budget = commentMaxBytes - head.utf8.count
        for u in rid.unicodeScalars {
            let c: Unicode.Scalar = u == "\"" ? "'" : (u.value < 0x20 || u.value == 0x7f ? "?" : u)
            let n = String(c).utf8.count
            if n > budget { break }
            budget -= n
            out.unicodeScalars.append(c)
        }
        return out
    }

    /// A name as written in nft text. Rampart's own names always fit nft's bare identifier
    /// grammar (`[A-Za-z_.][A-Za-z0-9/_.-]*`; keywords are accepted where a name is expected).
    /// Anything else (only possible in a hand-built IR) is double-quoted as a best effort: nft
    /// 1.0.6 does not accept quoted set or chain names, so such text is for reading only.
    public static func nftQuoted(_ name: String) -> String {
        let u = Array(name.utf8)
        let bare = !u.isEmpty && u.enumerated().allSatisfy { i, c in
            let alpha = (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == UInt8(ascii: "_") || c == UInt8(ascii: ".")
            let more = (c >= 0x30 && c <= 0x39) || c == UInt8(ascii: "-") || c == UInt8(ascii: "/")
            return i == 0 ? alpha : alpha || more
        }
        return bare ? name : "\"" + name.replacingOccurrences(of: "\"", with: "'") + "\""
    }
}
