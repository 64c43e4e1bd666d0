/// The validation rules that apply to typed values, shared by the JSON parser and by the
/// incremental events (which take typed values and must hold the document to the same rules).
enum Checks {
    /// Ids are 1–64 characters of `A-Z a-z 0-9 . _ : -`, which keeps every derived kernel name
    /// (`gout-` + id is at most 69 bytes) far below the kernel's 256-byte limit.
    static func isValidID(_ s: String) -> Bool {
        let u = s.utf8
        guard (1...64).contains(u.count) else { return false }
        return u.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
                || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: ":") || c == UInt8(ascii: "-")
        }
    }

    static func idProblem(_ s: String) -> String {
        "\(quoted(s)) is not a valid id (1-64 characters of A-Z a-z 0-9 . _ : -)"
    }

    /// Why `s` cannot be a host name (hosts are ids), or nil.
    static func hostProblem(_ s: String) -> String? {
        if s.isEmpty { return "must not be empty" }
        return isValidID(s) ? nil : "\(quoted(s)) is not a valid host (1-64 characters of A-Z a-z 0-9 . _ : -)"
    }

    /// Why `a` can never be an instance's own address (contract: "Values that are never an
    /// instance's"), or nil. Such an address in the anti-spoofing sets would let an instance
    /// send as the unspecified, broadcast, loopback, multicast or link-local source that the
    /// link protocols or the host itself use, or reach IPv4 peers through an IPv4-mapped form.
    static func instanceAddressProblem(_ a: IPAddress) -> String? {
        let kind: String?
        switch a {
        case .v4(let x):
            let r = x.raw
            if r == 0 { kind = "the unspecified address" }
            else if r == 0xffff_ffff { kind = "the broadcast address" }
            else if a.isLoopback { kind = "a loopback address (127.0.0.0/8)" }
            else if r >> 28 == 0xe { kind = "a multicast address (224.0.0.0/4)" }
            else if r >> 16 == 0xa9fe { kind = "a link-local address (169.254.0.0/16)" }
            else { kind = nil }
        case .v6(let x):
            if x.hi == 0 && x.lo == 0 { kind = "the unspecified address" }
            else if a.isLoopback { kind = "the loopback address" }
            else if x.hi >> 56 == 0xff { kind = "a multicast address (ff00::/8)" }
            else if x.hi >> 54 == 0x3fa { kind = "a link-local address (fe80::/10)" }
            else if x.hi == 0 && x.lo >> 32 == 0xffff { kind = "an IPv4-mapped address (::ffff:0:0/96)" }
            else { kind = nil }
        }
        return kind.map { "\(a) is \($0), never an instance's own" }
    }

    /// Why `name` cannot be an interface name, or nil. Stricter than the kernel on purpose: the
    /// name ends up in set elements, map keys, rendered nft text and iptables arguments, so only
    /// printable ASCII without quotes, backslashes or wildcards is accepted.
    static func interfaceProblem(_ name: String) -> String? {
        let prefix = "\(quoted(name)) is not a valid interface name: "
        if let p = namePrefixProblem(name) { return prefix + p }
        if name == "lo" { return prefix + "the loopback device is never an instance's" }
        return nil
    }

    /// Why `prefix` cannot be a guarded interface-name prefix (contract rule 9), or nil.
    static func guardedPrefixProblem(_ prefix: String) -> String? {
        if let p = namePrefixProblem(prefix) { return "\(quoted(prefix)) is not a valid interface-name prefix: " + p }
        // "l" or "lo" would close the loopback device to every IPv4 and IPv6 packet.
        if "lo".hasPrefix(prefix) { return "\(quoted(prefix)) would guard the loopback device lo" }
        return nil
    }

    /// The character rules shared by interface names and their prefixes.
    private static func namePrefixProblem(_ name: String) -> String? {
        let u = Array(name.utf8)
        if u.isEmpty { return "empty" }
        if u.count > 15 { return "\(u.count) bytes long; at most 15" }
        if name == "." || name == ".." { return "reserved" }
        for c in u {
            switch c {
            case UInt8(ascii: "+"), UInt8(ascii: "*"): return "contains '\(Character(Unicode.Scalar(c)))' (a wildcard to iptables and nft)"
            case UInt8(ascii: "/"): return "contains '/'"
            case UInt8(ascii: ":"): return "contains ':'"
            case UInt8(ascii: " "), 0x09, 0x0a, 0x0b, 0x0c, 0x0d: return "contains white space"
            case UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: "`"), UInt8(ascii: "\\"):
                return "contains a quote or backslash"
            case 0..<0x20, 0x7f: return "contains a control character"
            case 0x80...: return "contains a non-ASCII character"
            default: continue
            }
        }
        return nil
    }

    /// A rule whose fields may be partly unknown (because they failed to parse): the cross-field
    /// rules are checked on whatever is known, so that one bad field does not hide another error.
    struct RuleDraft {
        var proto: RuleProtocol?
        var hasPorts = false
        var hasIcmpType = false
        var hasIcmpCode = false
        var cidr: IPPrefix?
        var hasCidr = false
        var group: String?
        var hasGroup = false
        var ethertype: IPFamily?

        init() {}

        init(_ r: Rule) {
            proto = r.proto
            hasPorts = r.ports != nil
            hasIcmpType = r.icmpType != nil
            hasIcmpCode = r.icmpCode != nil
            switch r.remote {
            case .cidr(let p): cidr = p; hasCidr = true
            case .group(let g): group = g; hasGroup = true
            }
            ethertype = r.ethertype
        }
    }

    /// Cross-field and cross-reference rules of one rule at `path`.
    static func ruleIssues(_ d: RuleDraft, path: @autoclosure () -> String, groupExists: (String) -> Bool) -> [ValidationIssue] {
        var out: [ValidationIssue] = []
        func add(_ key: String?, _ reason: String) {
            out.append(ValidationIssue(path: key.map { joinPath(path(), $0) } ?? path(), reason: reason))
        }
        if !d.hasCidr && !d.hasGroup { add(nil, "needs one of cidr or group") }
        if d.hasCidr && d.hasGroup { add(nil, "cidr and group are mutually exclusive") }
        if let p = d.proto {
            if d.hasPorts && !p.hasPorts { add("ports", "not allowed with protocol \(p) (only tcp, udp, sctp)") }
            if d.hasIcmpType && !p.isICMP { add("icmp_type", "not allowed with protocol \(p) (only icmp, icmpv6)") }
        }
        if d.hasIcmpCode && !d.hasIcmpType { add("icmp_code", "only allowed together with icmp_type") }
        if let c = d.cidr, let e = d.ethertype, c.family != e { add("ethertype", "\(e.rawValue) contradicts cidr \(c)") }
        if let p = d.proto, p.isICMP {
            let wanted: IPFamily = p == .icmp ? .ipv4 : .ipv6
            if let c = d.cidr, c.family != wanted {
                add("protocol", "\(p) cannot match the \(c.family == .ipv4 ? "IPv4" : "IPv6") remote \(c)")
            } else if d.cidr == nil, let e = d.ethertype, e != wanted {
                add("protocol", "\(p) cannot match with ethertype \(e.rawValue)")
            }
        }
        if let g = d.group {
            if !isValidID(g) { add("group", idProblem(g)) } else if !groupExists(g) { add("group", "unknown group \(quoted(g))") }
        }
        return out
    }

    /// Why an instance of `host` cannot have these groups, or nil: more than `Instance.maxGroups`
    /// distinct groups, checked for instances of this host (all instances when `thisHost` is nil).
    static func groupCountProblem(_ groups: [String], host: String, thisHost: String?) -> String? {
        guard thisHost == nil || host == thisHost, groups.count > Instance.maxGroups else { return nil }
        let n = uniqued(groups).count
        guard n > Instance.maxGroups else { return nil }
        return "\(n) groups; an instance may be in at most \(Instance.maxGroups)"
    }

    /// Rules of one instance that need no other instance: ids, references, interface, addresses.
    static func instanceIssues(id: String, _ inst: Instance, path: String, thisHost: String?, groupExists: (String) -> Bool) -> [ValidationIssue] {
        var out: [ValidationIssue] = []
        if !isValidID(id) { out.append(ValidationIssue(path: path, reason: idProblem(id))) }
        if let p = hostProblem(inst.host) { out.append(ValidationIssue(path: joinPath(path, "host"), reason: p)) }
        for (i, g) in inst.groups.enumerated() where !groupExists(g) {
            out.append(ValidationIssue(path: joinPath(path, "groups") + "[\(i)]", reason: "unknown group \(quoted(g))"))
        }
        if let p = groupCountProblem(inst.groups, host: inst.host, thisHost: thisHost) {
            out.append(ValidationIssue(path: joinPath(path, "groups"), reason: p))
        }
        if inst.ips.isEmpty { out.append(ValidationIssue(path: joinPath(path, "ips"), reason: "needs at least one address")) }
        for (i, a) in inst.ips.enumerated() {
            if let p = instanceAddressProblem(a) { out.append(ValidationIssue(path: joinPath(path, "ips") + "[\(i)]", reason: p)) }
        }
        if let name = inst.interface {
            if let p = interfaceProblem(name) { out.append(ValidationIssue(path: joinPath(path, "interface"), reason: p)) }
        } else if let thisHost, inst.host == thisHost {
            out.append(ValidationIssue(path: joinPath(path, "interface"),
                                       reason: "missing; required for an instance on this host (\(thisHost))"))
        }
        return out
    }

    /// All rules of one typed rule, including the value ranges the JSON parser checks on text.
    static func typedRuleIssues(_ r: Rule, path: String, groupExists: (String) -> Bool) -> [ValidationIssue] {
        var out = ruleIssues(RuleDraft(r), path: path, groupExists: groupExists)
        if r.proto == .number(0) { out.append(ValidationIssue(path: path + ".protocol", reason: "0 is ambiguous; write \"any\"")) }
        if let p = r.ports, p.lowerBound == 0 { out.append(ValidationIssue(path: path + ".ports", reason: "0 is out of range 1-65535")) }
        return out
    }

    static func descriptionProblem(_ s: String) -> String? {
        // The contract counts Unicode scalar values (not grapheme clusters).
        let n = s.unicodeScalars.count
        return n > 255 ? "\(n) characters long; at most 255" : nil
    }
}

extension Document {
    /// Every rule of the spec that typed values can still break, sorted by path (empty when valid).
    public func issues() -> [ValidationIssue] {
        var out: [ValidationIssue] = []
        out += Validate.host(host, at: "host")
        for (i, p) in guardedPrefixes.enumerated() { out += Validate.guardedPrefix(p, at: "guarded_prefixes[\(i)]") }
        let exists: (String) -> Bool = { groups[$0] != nil }
        for (gid, g) in groups {
            let gp = joinPath("groups", gid)
            out += Validate.id(gid, at: gp)
            if let d = g.description { out += Validate.description(d, at: joinPath(gp, "description")) }
            for (i, r) in g.rules.enumerated() {
                out += Validate.rule(r, at: joinPath(gp, "rules") + "[\(i)]", groupExists: exists)
            }
        }
        for (iid, inst) in instances {
            out += Validate.instance(inst, id: iid, at: joinPath("instances", iid), thisHost: host, groupExists: exists)
        }
        out += localUniquenessIssues()
        return out.sorted()
    }

    /// Throws `DocumentError` listing every issue, if there is any.
    public func validate() throws(DocumentError) {
        let found = issues()
        if !found.isEmpty { throw DocumentError(found) }
    }

    /// Two instances on this host must not share an interface or an address. The instance with
    /// the smaller id keeps it and the other is reported, so the message is deterministic.
    func localUniquenessIssues() -> [ValidationIssue] {
        var out: [ValidationIssue] = []
        var ifaces: [String: String] = [:]
        var addrs: [IPAddress: String] = [:]
        for id in instances.keys.sorted() {
            let inst = instances[id]!
            guard inst.host == host else { continue }
            let path = joinPath("instances", id)
            if let name = inst.interface {
                if let owner = ifaces[name] {
                    out.append(ValidationIssue(path: joinPath(path, "interface"), reason: "\(quoted(name)) is already used by instance \(owner)"))
                } else {
                    ifaces[name] = id
                }
            }
            for (i, a) in inst.ips.enumerated() {
                if let owner = addrs[a], owner != id {
                    out.append(ValidationIssue(path: joinPath(path, "ips") + "[\(i)]", reason: "\(a) is already used by instance \(owner)"))
                } else {
                    addrs[a] = id
                }
            }
        }
        return out
    }
}
