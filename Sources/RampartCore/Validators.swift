/// The public validators: one per kind of value the contract constrains (ids, hosts, interface
/// names, instance addresses, MACs, guarded prefixes, descriptions, rules, instances), each
/// returning the issues found with their JSON paths (empty: valid).
///
/// These are the definitions: `Document.parse` (the JSON walker), `Document.issues()`, the
/// incremental events, the store and the CLI all call them, so each rule is written once.
/// `at` is the path of the value itself; issues about a field below it extend that path
/// (`groups.web.rules[0]` + `.ports`). A caller with its own vocabulary (the CLI's options)
/// maps paths back to it.
///
/// The `parse…` functions turn text, as written in a document or given as a command-line
/// option, into a typed value and run the value's validator, so that a typed value built from
/// text has passed the same checks as one read from a document.
public enum Validate {
    // MARK: typed values

    /// An id of a group or an instance: 1–64 characters of `A-Z a-z 0-9 . _ : -`.
    public static func id(_ s: String, at path: String) -> [ValidationIssue] {
        Checks.isValidID(s) ? [] : [ValidationIssue(path: path, reason: Checks.idProblem(s))]
    }

    /// A host name (hosts are ids).
    public static func host(_ s: String, at path: String) -> [ValidationIssue] {
        Checks.hostProblem(s).map { [ValidationIssue(path: path, reason: $0)] } ?? []
    }

    /// An instance's host-side interface name (printable ASCII, at most 15 bytes, not `lo`).
    public static func interface(_ name: String, at path: String) -> [ValidationIssue] {
        Checks.interfaceProblem(name).map { [ValidationIssue(path: path, reason: $0)] } ?? []
    }

    /// An instance's own address: never unspecified, broadcast, loopback, multicast,
    /// link-local or IPv4-mapped.
    public static func instanceAddress(_ a: IPAddress, at path: String) -> [ValidationIssue] {
        Checks.instanceAddressProblem(a).map { [ValidationIssue(path: path, reason: $0)] } ?? []
    }

    /// An interface-name prefix of `guarded_prefixes` (contract rule 9).
    public static func guardedPrefix(_ prefix: String, at path: String) -> [ValidationIssue] {
        Checks.guardedPrefixProblem(prefix).map { [ValidationIssue(path: path, reason: $0)] } ?? []
    }

    /// A group's description: at most 255 Unicode scalars.
    public static func description(_ s: String, at path: String) -> [ValidationIssue] {
        Checks.descriptionProblem(s).map { [ValidationIssue(path: path, reason: $0)] } ?? []
    }

    /// One rule: its cross-field rules (ports only with tcp/udp/sctp, ICMP fields only with ICMP,
    /// ethertype against cidr and protocol), the value ranges the types allow but the contract
    /// does not (protocol 0, port 0), and its remote group's id and existence.
    public static func rule(_ r: Rule, at path: String, groupExists: (String) -> Bool = { _ in true }) -> [ValidationIssue] {
        Checks.typedRuleIssues(r, path: path, groupExists: groupExists)
    }

    /// One instance record `id` at `path` (in a document: `instances.<id>`), in a document for
    /// `thisHost` (nil: no host is this one, so no interface is required): its id (reported at
    /// `path`), host, groups, addresses, interface. Uniqueness across instances needs the whole
    /// document (`Document.issues()`).
    public static func instance(_ inst: Instance, id: String, at path: String, thisHost: String?,
                                groupExists: (String) -> Bool = { _ in true }) -> [ValidationIssue] {
        Checks.instanceIssues(id: id, inst, path: path, thisHost: thisHost, groupExists: groupExists)
    }

    // MARK: text → typed values

    /// An instance address from text: IPv4 or IPv6, and an instance's own (see `instanceAddress`).
    public static func parseInstanceAddress(_ text: String, at path: String) -> Result<IPAddress, ValidationIssue> {
        guard let a = IPAddress(text) else { return .failure(ValidationIssue(path: path, reason: "\(quoted(text)) is not an IPv4 or IPv6 address")) }
        if let p = Checks.instanceAddressProblem(a) { return .failure(ValidationIssue(path: path, reason: p)) }
        return .success(a)
    }

    /// A MAC address, exactly `aa:bb:cc:dd:ee:ff`.
    public static func parseMAC(_ text: String, at path: String) -> Result<MACAddress, ValidationIssue> {
        guard let m = MACAddress(text) else {
            return .failure(ValidationIssue(path: path, reason: "\(quoted(text)) is not a MAC address like aa:bb:cc:dd:ee:ff"))
        }
        return .success(m)
    }

    /// A rule's direction: `ingress` or `egress`.
    public static func parseDirection(_ text: String, at path: @autoclosure () -> String) -> Result<Direction, ValidationIssue> {
        guard let d = Direction(rawValue: text) else { return .failure(ValidationIssue(path: path(), reason: "\(quoted(text)) is not \"ingress\" or \"egress\"")) }
        return .success(d)
    }

    /// A protocol given by name: tcp, udp, sctp, icmp, icmpv6 or any. (A document writes other
    /// protocols as JSON numbers: `parseProtocol(number:)`.)
    public static func parseProtocol(name text: String, at path: @autoclosure () -> String) -> Result<RuleProtocol, ValidationIssue> {
        if text == "any" { return .success(.any) }
        if let n = RuleProtocol.names[text] { return .success(.number(n)) }
        return .failure(ValidationIssue(path: path(), reason: "\(quoted(text)) is not one of tcp, udp, sctp, icmp, icmpv6, any, or a number 1-255"))
    }

    /// A protocol given by number: 1–255 (0 is ambiguous: `any` is meant, or a mistake).
    public static func parseProtocol(number n: Int, at path: @autoclosure () -> String) -> Result<RuleProtocol, ValidationIssue> {
        if n == 0 { return .failure(ValidationIssue(path: path(), reason: "0 is ambiguous; write \"any\"")) }
        return parseByte(n, at: path()).map { .number($0) }
    }

    /// An integer field of 0–255 (icmp_type, icmp_code, a protocol number).
    public static func parseByte(_ n: Int, at path: @autoclosure () -> String) -> Result<UInt8, ValidationIssue> {
        guard (0...255).contains(n) else { return .failure(ValidationIssue(path: path(), reason: "\(n) is out of range 0-255")) }
        return .success(UInt8(n))
    }

    /// Ports: `"N"` or `"N-M"`, 1–65535, N ≤ M, digits only.
    ///
    /// Over the UTF-8 bytes: every rules verb parses its group's rules, and every notified daemon
    /// parses them again (`rampart-bench rules-json`).
    public static func parsePorts(_ s: String, at path: @autoclosure () -> String) -> Result<ClosedRange<UInt16>, ValidationIssue> {
        var nums: [Int] = []
        var n = 0, digits = 0
        var malformed = false
        for b in s.utf8 {
            if b == UInt8(ascii: "-") && nums.isEmpty {
                if digits == 0 { malformed = true; break }
                nums.append(n); n = 0; digits = 0
            } else if b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") {
                // Digits only (Int("+80") would accept a sign); at most 10, as before.
                digits += 1
                if digits > 10 { malformed = true; break }
                n = n * 10 + Int(b - UInt8(ascii: "0"))
            } else {
                malformed = true; break
            }
        }
        if malformed || digits == 0 {
            return .failure(ValidationIssue(path: path(), reason: "\(quoted(s)) is not \"N\" or \"N-M\""))
        }
        nums.append(n)
        for n in nums where !(1...65535).contains(n) {
            return .failure(ValidationIssue(path: path(), reason: "\(n) is out of range 1-65535"))
        }
        let lo = nums[0], hi = nums.count == 2 ? nums[1] : nums[0]
        guard lo <= hi else { return .failure(ValidationIssue(path: path(), reason: "\(quoted(s)): \(lo) is greater than \(hi)")) }
        return .success(UInt16(lo)...UInt16(hi))
    }

    /// A remote prefix: `a.b.c.d/len`, `x::/len` or a bare address, host bits zero.
    public static func parseCIDR(_ text: String, at path: @autoclosure () -> String) -> Result<IPPrefix, ValidationIssue> {
        switch IPPrefix.parse(text) {
        case .ok(let p): .success(p)
        case .invalid(let why): .failure(ValidationIssue(path: path(), reason: why))
        }
    }

    /// A rule's ethertype: `ipv4` or `ipv6`.
    public static func parseEthertype(_ text: String, at path: @autoclosure () -> String) -> Result<IPFamily, ValidationIssue> {
        guard let e = IPFamily(rawValue: text) else { return .failure(ValidationIssue(path: path(), reason: "\(quoted(text)) is not \"ipv4\" or \"ipv6\"")) }
        return .success(e)
    }
}

/// An issue is also the error of a single-value parse (`Validate.parse…`).
extension ValidationIssue: Error {}

extension Result where Failure == ValidationIssue {
    /// The value, or nil with the issue appended to `issues` (for walkers that collect every issue).
    func collect(into issues: inout [ValidationIssue]) -> Success? {
        switch self {
        case .success(let v): return v
        case .failure(let i): issues.append(i); return nil
        }
    }
}

/// A rule as text fields, named as in a document (`protocol`, `ports`, `icmp_type`, …): what a
/// command line or a form gives. `rule(at:)` builds the typed `Rule` with the validators above,
/// reporting every issue (a bad field does not hide a cross-field problem of the others), with
/// paths `at` + the document key, so that a caller can name its own option for each.
public struct RuleFields: Hashable, Sendable {
    public var id: String?
    /// `ingress` (when nil) or `egress`.
    public var direction: String?
    /// A name (tcp, udp, sctp, icmp, icmpv6, any) or a decimal number 1–255.
    public var `protocol`: String?
    /// `N` or `N-M`.
    public var ports: String?
    public var icmpType: Int?
    public var icmpCode: Int?
    public var cidr: String?
    /// A remote group id.
    public var group: String?
    /// `ipv4` or `ipv6`.
    public var ethertype: String?

    public init(id: String? = nil, direction: String? = nil, protocol: String? = nil, ports: String? = nil,
                icmpType: Int? = nil, icmpCode: Int? = nil, cidr: String? = nil, group: String? = nil, ethertype: String? = nil) {
        self.id = id
        self.direction = direction
        self.protocol = `protocol`
        self.ports = ports
        self.icmpType = icmpType
        self.icmpCode = icmpCode
        self.cidr = cidr
        self.group = group
        self.ethertype = ethertype
    }

    /// The document key of each field, in document order (for callers that map paths to options).
    public static let keys = ["id", "direction", "protocol", "ports", "icmp_type", "icmp_code", "cidr", "group", "ethertype"]

    /// The typed rule, or every issue found. `groupExists` says which remote groups exist (by
    /// default any valid id does; the store checks existence in its transaction).
    public func rule(at path: String = "", groupExists: (String) -> Bool = { _ in true }) -> Result<Rule, DocumentError> {
        var issues: [ValidationIssue] = []
        func at(_ key: String) -> String { joinPath(path, key) }
        var d = Checks.RuleDraft()
        var dir: Direction? = .ingress
        if let direction { dir = Validate.parseDirection(direction, at: at("direction")).collect(into: &issues) }
        if let p = `protocol` {
            if !p.isEmpty, p.utf8.allSatisfy({ (0x30...0x39).contains($0) }) {
                // Digits only ("+6" is a name, and no name); an overflowing number is out of range.
                let r = Int(p).map { Validate.parseProtocol(number: $0, at: at("protocol")) }
                    ?? .failure(ValidationIssue(path: at("protocol"), reason: "\(p) is out of range 0-255"))
                d.proto = r.collect(into: &issues)
            } else {
                d.proto = Validate.parseProtocol(name: p, at: at("protocol")).collect(into: &issues)
            }
        } else {
            issues.append(ValidationIssue(path: at("protocol"), reason: "missing required key"))
        }
        var range: ClosedRange<UInt16>?
        if let ports {
            d.hasPorts = true
            range = Validate.parsePorts(ports, at: at("ports")).collect(into: &issues)
        }
        var type: UInt8?, code: UInt8?
        if let icmpType {
            d.hasIcmpType = true
            type = Validate.parseByte(icmpType, at: at("icmp_type")).collect(into: &issues)
        }
        if let icmpCode {
            d.hasIcmpCode = true
            code = Validate.parseByte(icmpCode, at: at("icmp_code")).collect(into: &issues)
        }
        if let cidr {
            d.hasCidr = true
            d.cidr = Validate.parseCIDR(cidr, at: at("cidr")).collect(into: &issues)
        }
        if let group {
            d.hasGroup = true
            d.group = group
        }
        if let ethertype { d.ethertype = Validate.parseEthertype(ethertype, at: at("ethertype")).collect(into: &issues) }
        issues += Checks.ruleIssues(d, path: path, groupExists: groupExists)
        guard issues.isEmpty, let dir, let proto = d.proto else { return .failure(DocumentError(issues)) }
        let remote: Remote = d.cidr.map { .cidr($0) } ?? .group(d.group!)
        return .success(Rule(id: id, direction: dir, proto: proto, ports: range, icmpType: type, icmpCode: code,
                             remote: remote, ethertype: d.ethertype))
    }
}
