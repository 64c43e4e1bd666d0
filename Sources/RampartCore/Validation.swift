import Foundation

extension Document {
    /// Parses and validates a version-1 document. Throws `DocumentError` with every issue found
    /// (sorted by path); a document is accepted only whole.
    public static func parse(json data: Data) throws(DocumentError) -> Document {
        try parse(bytes: Array(data))
    }

    /// Same as `parse(json:)` for text.
    public static func parse(json text: String) throws(DocumentError) -> Document {
        try parse(bytes: Array(text.utf8))
    }

    static func parse(bytes: [UInt8]) throws(DocumentError) -> Document {
        let root: JSONValue
        do {
            root = try JSONParser.parse(bytes)
        } catch {
            throw DocumentError([ValidationIssue(path: "", reason: "not valid JSON at byte \(error.offset): \(error.reason)")])
        }
        var w = DocumentWalker()
        let doc = w.document(root)
        var issues = w.issues
        if let doc {
            // Cross-instance rules need the whole document, so they run after the walk.
            issues += doc.localUniquenessIssues()
        }
        if !issues.isEmpty || doc == nil { throw DocumentError(issues) }
        return doc!
    }
}

extension Rule {
    /// Parses a JSON array of rules, in document syntax (a group's `rules`), validated as a
    /// document's would be; issue paths start at `path` (e.g. `groups.web.rules`). `groupExists`
    /// says which remote groups a rule may name. The store keeps each group's rules this way.
    public static func parseList(json text: String, at path: String, groupExists: (String) -> Bool) throws(DocumentError) -> [Rule] {
        let root: JSONValue
        do {
            root = try JSONParser.parse(Array(text.utf8))
        } catch {
            throw DocumentError([ValidationIssue(path: path, reason: "not valid JSON at byte \(error.offset): \(error.reason)")])
        }
        guard case .array(let items) = root else {
            throw DocumentError([ValidationIssue(path: path, reason: "expected an array, got \(root.typeName)")])
        }
        var w = DocumentWalker()
        var rules: [Rule] = []
        for (i, item) in items.enumerated() {
            if let r = w.rule(item, path + "[\(i)]", exists: groupExists) { rules.append(r) }
        }
        if !w.issues.isEmpty { throw DocumentError(w.issues) }
        return rules
    }
}

/// Walks the JSON tree, converting it into typed values and collecting every issue on the way.
/// Each field is converted independently so that one bad field does not hide the next.
struct DocumentWalker {
    var issues: [ValidationIssue] = []

    /// A rule's keys; `RuleKey` numbers them.
    static let ruleKeys = ["id", "direction", "protocol", "ports", "icmp_type", "icmp_code", "cidr", "group", "ethertype"]
    private enum RuleKey {
        static let id = 0, direction = 1, proto = 2, ports = 3, icmpType = 4, icmpCode = 5, cidr = 6, group = 7, ethertype = 8
    }

    private mutating func issue(_ path: String, _ reason: String) {
        issues.append(ValidationIssue(path: path, reason: reason))
    }

    /// Keeps a validator's issues; true when there were none.
    private mutating func collect(_ found: [ValidationIssue]) -> Bool {
        issues += found
        return found.isEmpty
    }

    /// Checks an object's keys (unknown, duplicate, missing) and returns it as a dictionary.
    private mutating func object(_ v: JSONValue, _ path: @autoclosure () -> String, allowed: [String], required: [String]) -> [String: JSONValue]? {
        guard let values = fields(v, path(), keys: allowed, required: required.compactMap { allowed.firstIndex(of: $0) }) else { return nil }
        var out: [String: JSONValue] = [:]
        for (k, value) in zip(allowed, values) where value != nil { out[k] = value }
        return out
    }

    /// An object's values by the position of their key in `keys` (nil: absent); an unknown,
    /// duplicate or missing key is an issue. Every rules verb and every daemon's rules
    /// refresh parses its group's rules: building a dictionary and a set of the allowed keys was
    /// half of a rule's parse (`perf`, `rampart-bench rules-json`).
    private mutating func fields(_ v: JSONValue, _ path: @autoclosure () -> String, keys: [String], required: [Int]) -> [JSONValue?]? {
        guard case .object(let pairs) = v else {
            issue(path(), "expected an object, got \(v.typeName)")
            return nil
        }
        var out = [JSONValue?](repeating: nil, count: keys.count)
        for (k, val) in pairs {
            guard let n = keys.firstIndex(of: k) else { issue(joinPath(path(), k), "unknown key"); continue }
            if out[n] != nil { issue(joinPath(path(), k), "duplicate key"); continue }
            out[n] = val
        }
        for n in required where out[n] == nil { issue(joinPath(path(), keys[n]), "missing required key") }
        return out
    }

    /// A map of id → value (groups, instances): only duplicate keys and ids are checked here.
    private mutating func idMap(_ v: JSONValue, _ path: String) -> [(String, JSONValue)]? {
        guard case .object(let pairs) = v else {
            issue(path, "expected an object, got \(v.typeName)")
            return nil
        }
        var seen = Set<String>()
        var out: [(String, JSONValue)] = []
        for (k, val) in pairs {
            if !seen.insert(k).inserted { issue(joinPath(path, k), "duplicate key"); continue }
            let idIssues = Validate.id(k, at: joinPath(path, k))
            if !idIssues.isEmpty { issues += idIssues; continue }
            out.append((k, val))
        }
        return out
    }

    private mutating func string(_ v: JSONValue, _ path: @autoclosure () -> String) -> String? {
        guard case .string(let s) = v else { issue(path(), "expected a string, got \(v.typeName)"); return nil }
        return s
    }

    private mutating func integer(_ v: JSONValue, _ path: @autoclosure () -> String, _ range: ClosedRange<Int>) -> Int? {
        guard case .number(let text) = v else { issue(path(), "expected an integer, got \(v.typeName)"); return nil }
        guard let n = v.integer else {
            // An integer too large for Int is still an integer, just out of range.
            if !text.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) {
                issue(path(), "\(text) is out of range \(range.lowerBound)-\(range.upperBound)")
            } else {
                issue(path(), "expected an integer, got \(text)")
            }
            return nil
        }
        guard range.contains(n) else { issue(path(), "\(n) is out of range \(range.lowerBound)-\(range.upperBound)"); return nil }
        return n
    }

    mutating func document(_ root: JSONValue) -> Document? {
        guard let top = object(root, "", allowed: ["version", "host", "groups", "instances", "guarded_prefixes"],
                               required: ["version", "host", "groups", "instances"]) else { return nil }
        if let v = top["version"] {
            if case .number(let t) = v {
                if v.integer != 1 { issue("version", "\(t) is not supported; expected 1") }
            } else {
                issue("version", "expected the number 1, got \(v.typeName)")
            }
        }
        var host: String?
        if let h = top["host"], let s = string(h, "host") {
            if collect(Validate.host(s, at: "host")) { host = s }
        }
        var guarded: [String] = []
        if let x = top["guarded_prefixes"] {
            if case .array(let items) = x {
                for (i, item) in items.enumerated() {
                    let path = "guarded_prefixes[\(i)]"
                    guard let p = string(item, path) else { continue }
                    if collect(Validate.guardedPrefix(p, at: path)) { guarded.append(p) }
                }
            } else {
                issue("guarded_prefixes", "expected an array, got \(x.typeName)")
            }
        }
        // Group ids are collected first so that references can be checked even when a group's
        // body is itself invalid.
        let groupPairs = top["groups"].flatMap { idMap($0, "groups") }
        let groupIDs = Set(groupPairs?.map(\.0) ?? [])
        let exists: (String) -> Bool = { groupIDs.contains($0) }
        var groups: [String: Group] = [:]
        var groupsOK = groupPairs != nil
        for (gid, gv) in groupPairs ?? [] {
            if let g = group(gv, joinPath("groups", gid), exists: exists) { groups[gid] = g } else { groupsOK = false }
        }
        var instances: [String: Instance] = [:]
        let instPairs = top["instances"].flatMap { idMap($0, "instances") }
        var instancesOK = instPairs != nil
        for (iid, iv) in instPairs ?? [] {
            if let i = instance(iv, joinPath("instances", iid), thisHost: host, exists: exists) { instances[iid] = i } else { instancesOK = false }
        }
        guard let host, groupsOK, instancesOK, issues.isEmpty else { return nil }
        return Document(host: host, groups: groups, instances: instances, guardedPrefixes: guarded)
    }

    private mutating func group(_ v: JSONValue, _ path: String, exists: (String) -> Bool) -> Group? {
        guard let o = object(v, path, allowed: ["description", "rules"], required: ["rules"]) else { return nil }
        var ok = true
        var g = Group()
        if let d = o["description"] {
            if let s = string(d, joinPath(path, "description")) {
                if collect(Validate.description(s, at: joinPath(path, "description"))) { g.description = s } else { ok = false }
            } else { ok = false }
        }
        if let r = o["rules"] {
            let rp = joinPath(path, "rules")
            if case .array(let items) = r {
                for (i, item) in items.enumerated() {
                    if let rule = rule(item, rp + "[\(i)]", exists: exists) { g.rules.append(rule) } else { ok = false }
                }
            } else {
                issue(rp, "expected an array, got \(r.typeName)")
                ok = false
            }
        } else { ok = false }
        return ok ? g : nil
    }

    mutating func rule(_ v: JSONValue, _ path: @autoclosure () -> String, exists: (String) -> Bool) -> Rule? {
        guard let o = fields(v, path(), keys: Self.ruleKeys, required: [RuleKey.proto]) else { return nil }
        let before = issues.count
        var d = Checks.RuleDraft()
        var id: String?
        if let x = o[RuleKey.id] { id = string(x, joinPath(path(), "id")) }
        var direction = Direction.ingress
        if let x = o[RuleKey.direction], let s = string(x, joinPath(path(), "direction")) {
            if let dir = Validate.parseDirection(s, at: joinPath(path(), "direction")).collect(into: &issues) { direction = dir }
        }
        if let x = o[RuleKey.proto] { d.proto = proto(x, joinPath(path(), "protocol")) }
        var ports: ClosedRange<UInt16>?
        if let x = o[RuleKey.ports] {
            d.hasPorts = true
            ports = self.ports(x, joinPath(path(), "ports"))
        }
        var icmpType: UInt8?, icmpCode: UInt8?
        if let x = o[RuleKey.icmpType] {
            d.hasIcmpType = true
            icmpType = integer(x, joinPath(path(), "icmp_type"), 0...255).map { UInt8($0) }
        }
        if let x = o[RuleKey.icmpCode] {
            d.hasIcmpCode = true
            icmpCode = integer(x, joinPath(path(), "icmp_code"), 0...255).map { UInt8($0) }
        }
        if let x = o[RuleKey.cidr] {
            d.hasCidr = true
            if let s = string(x, joinPath(path(), "cidr")) {
                d.cidr = Validate.parseCIDR(s, at: joinPath(path(), "cidr")).collect(into: &issues)
            }
        }
        if let x = o[RuleKey.group] {
            d.hasGroup = true
            d.group = string(x, joinPath(path(), "group"))
        }
        if let x = o[RuleKey.ethertype], let s = string(x, joinPath(path(), "ethertype")) {
            d.ethertype = Validate.parseEthertype(s, at: joinPath(path(), "ethertype")).collect(into: &issues)
        }
        issues += Checks.ruleIssues(d, path: path(), groupExists: exists)
        guard issues.count == before, let p = d.proto else { return nil }
        let remote: Remote = d.cidr.map { .cidr($0) } ?? .group(d.group!)
        return Rule(id: id, direction: direction, proto: p, ports: ports, icmpType: icmpType, icmpCode: icmpCode,
                    remote: remote, ethertype: d.ethertype)
    }

    private mutating func proto(_ v: JSONValue, _ path: @autoclosure () -> String) -> RuleProtocol? {
        switch v {
        case .string(let s):
            return Validate.parseProtocol(name: s, at: path()).collect(into: &issues)
        case .number:
            if v.integer == 0 { return Validate.parseProtocol(number: 0, at: path()).collect(into: &issues) }
            return integer(v, path(), 0...255).map { .number(UInt8($0)) }
        default:
            issue(path(), "expected a string or an integer, got \(v.typeName)")
            return nil
        }
    }

    private mutating func ports(_ v: JSONValue, _ path: @autoclosure () -> String) -> ClosedRange<UInt16>? {
        guard let s = string(v, path()) else { return nil }
        return Validate.parsePorts(s, at: path()).collect(into: &issues)
    }

    private mutating func instance(_ v: JSONValue, _ path: String, thisHost: String?, exists: (String) -> Bool) -> Instance? {
        guard let o = object(v, path, allowed: ["host", "groups", "ips", "interface", "mac"], required: ["host", "groups", "ips"]) else {
            return nil
        }
        let before = issues.count
        var host: String?
        if let x = o["host"], let s = string(x, joinPath(path, "host")) {
            if collect(Validate.host(s, at: joinPath(path, "host"))) { host = s }
        }
        var groups: [String] = []
        if let x = o["groups"] {
            let gp = joinPath(path, "groups")
            if case .array(let items) = x {
                for (i, item) in items.enumerated() {
                    guard let g = string(item, gp + "[\(i)]") else { continue }
                    if !exists(g) { issue(gp + "[\(i)]", "unknown group \(quoted(g))") } else { groups.append(g) }
                }
            } else { issue(gp, "expected an array, got \(x.typeName)") }
            if let h = host, let p = Checks.groupCountProblem(groups, host: h, thisHost: thisHost) { issue(gp, p) }
        }
        var ips: [IPAddress] = []
        if let x = o["ips"] {
            let ip = joinPath(path, "ips")
            if case .array(let items) = x {
                if items.isEmpty { issue(ip, "needs at least one address") }
                for (i, item) in items.enumerated() {
                    guard let s = string(item, ip + "[\(i)]") else { continue }
                    if let a = Validate.parseInstanceAddress(s, at: ip + "[\(i)]").collect(into: &issues) { ips.append(a) }
                }
            } else { issue(ip, "expected an array, got \(x.typeName)") }
        }
        var iface: String?
        if let x = o["interface"], let s = string(x, joinPath(path, "interface")) {
            if collect(Validate.interface(s, at: joinPath(path, "interface"))) { iface = s }
        } else if o["interface"] == nil, let h = host, h == thisHost {
            issue(joinPath(path, "interface"), "missing; required for an instance on this host (\(h))")
        }
        var mac: MACAddress?
        if let x = o["mac"], let s = string(x, joinPath(path, "mac")) {
            mac = Validate.parseMAC(s, at: joinPath(path, "mac")).collect(into: &issues)
        }
        guard issues.count == before, let host else { return nil }
        return Instance(host: host, groups: groups, ips: ips, interface: iface, mac: mac)
    }
}
